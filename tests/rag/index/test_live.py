"""This process's index kept current: the lease it writes under in each mode, and documents
made searchable and removed through it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from rag.index.live import LiveIndex
from rag.index.writer import WRITER_LOCK
from rag.settings import Settings
from rag.stores.chunks import build_store
from tests.conftest import REDIS_URL


@pytest.mark.parametrize("redis_url", [None, ""])
def test_without_redis_the_lease_is_this_process_lock(
    tmp_path: Path, redis_url: str | None, redis_client: Any
) -> None:
    """An empty RAG_REDIS_URL means no Redis, as for the cache and the queue."""
    settings = Settings(data_dir=tmp_path, redis_url=redis_url)
    live = LiveIndex(settings, build_store(settings))
    assert not live.lease.shared
    with live.lease.held():
        assert live.lease.local.locked()
        assert redis_client.get(WRITER_LOCK) is None
        taken = threading.Event()
        other = threading.Thread(target=lambda: live.lease.local.acquire(timeout=0.2)
                                 and taken.set())
        other.start()
        other.join()
        assert not taken.is_set()  # a second writer in this process waits
    assert not live.lease.local.locked()


def test_with_redis_the_lease_is_shared(tmp_path: Path, redis_client: Any) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=REDIS_URL)
    live = LiveIndex(settings, build_store(settings))
    assert live.lease.shared
    with live.lease.held():
        assert redis_client.get(WRITER_LOCK) is not None
    assert redis_client.get(WRITER_LOCK) is None


@pytest.mark.slow
def test_an_empty_redis_url_indexes_and_deletes(make_service: Any, tmp_path: Path) -> None:
    service = make_service(redis_url="")
    path = tmp_path / "lamps.txt"
    path.write_text("The lamplighter lights the harbour lamps at dusk every evening.")
    doc = service.documents.ingest_file(path)
    assert doc.state == "indexed" and service.index.index.count == doc.chunk_count > 0
    assert service.documents.delete(doc.id)
    assert service.index.index.count == 0

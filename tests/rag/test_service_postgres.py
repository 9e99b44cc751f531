"""PostgreSQL mode in-process: a writer that keeps no index, and serving processes that each
build their own from the store and follow the change log (two services on one database stand
for two machines: each has its own data directory)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import pytest

from rag.ask.service import AskRequest
from rag.service import RagService
from rag.stores.uploads import sha256_file

pytestmark = pytest.mark.slow

FACT = "The lighthouse keeper of Brannock Point is called Mirela Oduya."
QUESTION = "Who is the lighthouse keeper of Brannock Point?"


def indexed_ids(service: RagService) -> set[int]:
    assert service.index.loaded
    return set(faiss.vector_to_array(service.index.index._cpu.id_map).tolist())


def cites(service: RagService, filename: str) -> bool:
    answer = service.asking.ask(AskRequest(QUESTION, top_k=3))
    return any(c.filename == filename for c in answer.citations)


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def test_two_processes_follow_one_store(
    make_service: Any, pg_url: str, tmp_path: Path
) -> None:
    # The catch-up poll is out of reach (an hour): only a NOTIFY can bring the changes.
    writer = make_service(database_url=pg_url, max_new_tokens=16, index_catchup_s=3600)
    reader = make_service(database_url=pg_url, max_new_tokens=16, index_catchup_s=3600)
    source = tmp_path / "keepers.txt"
    source.write_text(FACT)

    doc = writer.documents.ingest_file(source)
    assert doc.state == "indexed" and not (writer.settings.data_dir / "uploads").exists()
    assert writer.uploads.has(sha256_file(source))  # the bytes are in the database
    searchable = set(reader.store.searchable_ids().tolist())
    wait_for(lambda: indexed_ids(reader) == searchable)
    assert cites(reader, "keepers.txt") and cites(writer, "keepers.txt")

    reader.documents.delete(doc.id)
    assert indexed_ids(reader) == set()  # the deleting process applies it at once
    wait_for(lambda: indexed_ids(writer) == set())
    assert not cites(writer, "keepers.txt") and not cites(reader, "keepers.txt")
    assert not writer.uploads.has(doc.id)


def test_a_restart_resumes_its_saved_index_from_the_log(
    make_service: Any, pg_url: str, tmp_path: Path, embedder: object, generator: object
) -> None:
    first = make_service(database_url=pg_url)
    for n in range(3):
        (tmp_path / f"f{n}.txt").write_text(f"{FACT} Note number {n} of three.")
        first.documents.ingest_file(tmp_path / f"f{n}.txt")
    first.close()  # saves its index with the log position it holds
    assert first.index.loaded and first.index.index.log_seq > 0
    other = make_service(database_url=pg_url)
    other.documents.delete(first.store.list_documents()[0][0].id)  # while `first` is down

    again = RagService(first.settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    again.load(generator=False)
    try:
        assert again.index.loaded and again.index.index.log_seq == other.index.index.log_seq
        assert indexed_ids(again) == set(again.store.searchable_ids().tolist())
        docs, total = again.store.list_documents()
        assert total == 2 and len(indexed_ids(again)) == sum(d.chunk_count for d in docs) > 0
    finally:
        again.close()


def test_a_writer_keeps_no_index_and_a_lost_log_means_a_rebuild(
    make_service: Any, pg_url: str, tmp_path: Path, embedder: object, generator: object
) -> None:
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path / "worker", database_url=pg_url)
    worker = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    worker.load(generator=False, follow=False)  # as `rag worker` does
    (tmp_path / "a.txt").write_text(FACT)
    worker.documents.ingest_file(tmp_path / "a.txt")
    assert worker.index.follower is None and worker.index.loaded and worker.index.index.count == 0
    assert not settings.index_dir.exists()

    reader = make_service(database_url=pg_url)
    assert indexed_ids(reader) == set(reader.store.searchable_ids().tolist()) != set()
    reader.close()
    with reader.store.transaction() as db:  # the log is pruned past where `reader` stopped
        db.execute("DELETE FROM index_log")
        db.execute("INSERT INTO index_log (op, chunk_id, at) VALUES ('add', 0, 0)")
        db.execute("INSERT INTO index_log (op, chunk_id, at) VALUES ('add', 0, 0)")
        db.execute("DELETE FROM index_log WHERE seq < (SELECT MAX(seq) FROM index_log)")
    again = RagService(reader.settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    again.load(generator=False)
    try:
        assert indexed_ids(again) == set(again.store.searchable_ids().tolist())
        assert again.index.loaded and again.index.index.log_seq == again.store.log_position()  # type: ignore[attr-defined]
    finally:
        again.close()
        worker.store.close()

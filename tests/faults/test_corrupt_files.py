"""A damaged data directory at start: a corrupt or truncated FAISS file or manifest is rebuilt
from the chunk store with a warning; a damaged chunk store is a clear error naming the file."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rag.errors import StoreUnreadable
from rag.index.vectors import MANIFEST, read_manifest
from rag.service import RagService
from rag.settings import Settings
from rag.types import Query
from tests.api.helpers import ingest_corpus

pytestmark = pytest.mark.slow


def _truncate_index(index_dir: Path) -> None:
    [path] = index_dir.glob("index-*.faiss")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_index(index_dir: Path) -> None:
    [path] = index_dir.glob("index-*.faiss")
    path.write_bytes(b"\x00garbage" * 100)


def _remove_index_file(index_dir: Path) -> None:
    [path] = index_dir.glob("index-*.faiss")
    path.unlink()


def _truncate_manifest(index_dir: Path) -> None:
    path = index_dir / MANIFEST
    path.write_bytes(path.read_bytes()[:20])


def _manifest_without_fields(index_dir: Path) -> None:
    (index_dir / MANIFEST).write_text('{"version": 3}')


def _manifest_with_wrong_count(index_dir: Path) -> None:
    path = index_dir / MANIFEST
    path.write_text(path.read_text().replace('"count": ', '"count": 1'))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated index file": _truncate_index,
    "garbage index file": _garble_index,
    "index file missing": _remove_index_file,
    "truncated manifest": _truncate_manifest,
    "manifest without fields": _manifest_without_fields,
    "manifest count disagrees": _manifest_with_wrong_count,
}


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any,
                models_dir: Path) -> Path:
    """A data directory with the corpus indexed, made once; each test damages a copy."""
    root = tmp_path_factory.mktemp("corrupt-template")
    settings = Settings(data_dir=root / "data", converted_models_dir=models_dir)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, root / "corpus")
    service.store.close()
    return settings.data_dir


@pytest.fixture()
def damaged_copy(indexed_dir: Path, tmp_path: Path, embedder: Any, generator: Any,
             models_dir: Path) -> RagService:
    data = tmp_path / "data"
    shutil.copytree(indexed_dir, data)
    settings = Settings(data_dir=data, converted_models_dir=models_dir)
    return RagService(settings, embedder=embedder, generator=generator)


def _reopen(service: RagService) -> RagService:
    again = RagService(service.settings, embedder=service.embedder, generator=service.generator)
    again.load()
    return again


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_index_is_rebuilt_from_the_chunk_store_with_a_warning(
    damaged_copy: RagService, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    service = damaged_copy
    searchable = service.store.searchable_count()
    service.store.close()
    DAMAGE[damage](service.settings.index_dir)
    caplog.set_level(logging.WARNING, logger="rag.index.live")
    started = time.perf_counter()
    again = _reopen(service)
    took = time.perf_counter() - started
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("rebuilding" in w for w in warnings), warnings
        assert again.index.loaded and again.index.index.count == searchable > 0
        manifest = read_manifest(service.settings.index_dir)  # rewritten, readable again
        assert manifest is not None and manifest.count == searchable
        assert again.asking.retriever is not None
        hits = again.asking.retrieve(Query("Which platform does the night train leave from?",
                                              3))
        assert hits and hits[0].filename == "rail.txt"
        print(f"\n{damage}: rebuilt {searchable} vectors at start in {took:.2f} s")
    finally:
        again.store.close()


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = b"this is no longer a SQLite header" + bytes(67)
    path.write_bytes(bytes(data))


def _truncate_store(path: Path) -> None:
    with sqlite3.connect(path) as db:  # fold the WAL in first, so the cut hits table pages
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = 4096
    path.write_bytes(path.read_bytes()[: 2 * page])


@pytest.mark.parametrize("damage", [_garble_header, _truncate_store],
                         ids=["garbled header", "truncated"])
def test_a_damaged_chunk_store_is_an_error_naming_the_file_and_the_fix(
    damaged_copy: RagService, damage: Callable[[Path], None]
) -> None:
    service = damaged_copy
    path = service.settings.store_path
    damage(path)
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with pytest.raises(StoreUnreadable) as caught:
        _reopen(service)
    error = caught.value
    assert str(path) in error.message and "corrupt or truncated" in error.message
    assert "backup" in error.hint and "upload the documents again" in error.hint

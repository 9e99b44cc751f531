"""The store contract's fixtures: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.stores.chunks import ChunkStore, SqliteChunkStore
from rag.stores.chunks_postgres import PgChunkStore
from rag.stores.uploads import PgUploadStore, Uploads, UploadStore


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChunkStore]:
    made = (PgChunkStore(request.getfixturevalue("pg_url")) if backend == "postgres"
            else SqliteChunkStore(tmp_path / "s.sqlite3"))
    made.open()
    yield made
    made.close()


@pytest.fixture()
def uploads(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Uploads]:
    made: Uploads = (PgUploadStore(request.getfixturevalue("pg_url"), tmp_path / "scratch")
                     if backend == "postgres" else UploadStore(tmp_path / "uploads"))
    made.open()
    yield made

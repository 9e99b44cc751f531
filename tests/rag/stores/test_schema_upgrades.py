"""Columns schema version 2 added (table-row headers on sentences, document versions): both
backends keep them, and a store written by the first schema opens upgraded, its rows kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from rag.stores.chunks import ChunkStore, SqliteChunkStore
from rag.stores.chunks_postgres import PgChunkStore
from rag.types import Document, SentenceDraft

# The first schema's documents and sentences tables, as a release before versions wrote them.
V1_TABLES = """
CREATE TABLE documents (id TEXT PRIMARY KEY, filename TEXT NOT NULL, content_type TEXT NOT NULL,
    size INTEGER NOT NULL, collection TEXT NOT NULL DEFAULT 'default',
    metadata TEXT NOT NULL DEFAULT '{}', pages INTEGER, chunk_count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE sentences (id INTEGER PRIMARY KEY AUTOINCREMENT, document_id TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL, page INTEGER,
    title_path TEXT NOT NULL DEFAULT '[]', vector BLOB NOT NULL);
"""
OLD_ROW = ("INSERT INTO documents (id, filename, content_type, size, state, created_at, "
           "updated_at) VALUES ('old', 'a.md', 'text/markdown', 3, 'indexed', 1, 1)")
OLD_SENTENCE = ("INSERT INTO sentences (document_id, start, \"end\", text, vector) "
                "VALUES ('old', 0, 3, 'Hi.', ?)")


def test_sentences_keep_a_table_rows_header(store: ChunkStore) -> None:
    store.put_document(Document("d1", "t.md", "text/markdown", 10))
    drafts = [SentenceDraft(0, 9, "| PDF | yes |", None, ("Formats",), "| Format | OCR |"),
              SentenceDraft(10, 19, "Plain prose.", None, ())]
    store.add_sentences("d1", drafts, np.eye(2, 4, dtype=np.float32))
    found = [s for s, _ in store.sentences_within([("d1", 0, 30)])]
    assert [(s.text, s.header) for s in found] == [
        ("| PDF | yes |", "| Format | OCR |"), ("Plain prose.", None)]


def test_documents_are_their_own_first_version_by_default(store: ChunkStore) -> None:
    doc = store.put_document(Document("d1", "a.md", "text/markdown", 10))
    got = store.get_document("d1")
    assert got is not None and got == doc
    assert (got.version, got.replaces, got.reused_chunks) == (1, None, 0)
    assert got.lineage.startswith("lineage-") and store.versions("d1") == [got]


def _check_upgraded(store: ChunkStore) -> None:
    old = store.get_document("old")
    assert old is not None and (old.filename, old.version, old.lineage) == ("a.md", 1, "old")
    assert (old.tenant, old.access) == ("default", ())  # rows before tenants: the default's
    found = store.sentences_within([("old", 0, 3)])
    assert [(s.text, s.header) for s, _ in found] == [("Hi.", None)]
    store.add_sentences("old", [SentenceDraft(4, 8, "Row.", None, (), "H")],
                        np.ones((1, 4), np.float32))
    assert [s.header for s, _ in store.sentences_within([("old", 4, 8)])] == ["H"]


def test_a_sqlite_file_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "chunks.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_TABLES)
        db.execute(OLD_ROW)
        db.execute(OLD_SENTENCE, (np.ones(4, np.float16).tobytes(),))
        db.execute("PRAGMA user_version=1")
    store = SqliteChunkStore(path)
    _check_upgraded(store)
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    again = SqliteChunkStore(path)  # a second open finds nothing to add
    assert again.get_document("old") is not None
    again.close()


def test_a_postgres_database_of_the_first_schema_is_migrated(pg_url: str) -> None:
    import psycopg
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, pool

    from rag.stores.postgres import MIGRATIONS, driver_url

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(driver_url(pg_url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(OLD_ROW)
        conn.execute(OLD_SENTENCE.replace("?", "%s"), (np.ones(4, np.float16).tobytes(),))
    store = PgChunkStore(pg_url)
    _check_upgraded(store)
    store.close()

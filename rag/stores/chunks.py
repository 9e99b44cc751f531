"""The chunk store: documents and chunks with text, offsets and vectors.

It is the source of truth: the FAISS index and the BM25 index are rebuilt from it. Only
chunks of documents in state `indexed` are searchable, so a document becomes visible in
one transaction (`promote`, which also retires the version it replaces) and a crash
mid-ingest leaves nothing half-searchable.
The SQL is portable and lives in `ChunkStore`, the type callers use; `SqliteChunkStore` (here)
runs it on SQLite in the data directory, `PgChunkStore` (rag.stores.chunks_postgres) on
PostgreSQL, where it also writes the index change log. `build_store` picks one.

A document's state changes only through `set_state` (guarded by TRANSITIONS) and `promote`;
`put_version` creates it (queued, or processing for `rag ingest`); see rag.stores.documents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from rag.access import EVERYONE, Reader
from rag.settings import Settings
from rag.stores.documents import (
    DOC_COLUMNS,
    TRANSITIONS,
    DocumentRecords,
    Promotion,
    reader_clause,
)
from rag.stores.sqlite import SqliteDatabase
from rag.types import Chunk, ChunkDraft, Query, Sentence, SentenceDraft

log = logging.getLogger(__name__)
__all__ = ["DOC_COLUMNS", "TRANSITIONS", "ChunkStore", "Promotion", "SqliteChunkStore",
           "build_store"]

# Sentence vectors are kept in half precision: they only rank a few dozen sentences per ask.
SENTENCE_DTYPE = np.float16

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    collection TEXT NOT NULL DEFAULT 'default',
    metadata TEXT NOT NULL DEFAULT '{}',
    pages INTEGER,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    lineage TEXT NOT NULL DEFAULT '',
    replaces TEXT,
    reused_chunks INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT 'default',
    access TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS documents_collection ON documents(collection);
CREATE INDEX IF NOT EXISTS documents_name ON documents(collection, filename);
CREATE INDEX IF NOT EXISTS documents_lineage ON documents(lineage, version);
CREATE INDEX IF NOT EXISTS documents_tenant ON documents(tenant, collection);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    page INTEGER,
    title_path TEXT NOT NULL DEFAULT '[]',
    token_count INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks(document_id);
CREATE TABLE IF NOT EXISTS sentences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    title_path TEXT NOT NULL DEFAULT '[]',
    vector BLOB NOT NULL,
    header TEXT
);
CREATE INDEX IF NOT EXISTS sentences_document ON sentences(document_id, start);
"""

SEARCHABLE = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id " \
    "WHERE d.state = 'indexed'"

# Columns later schema versions added to a table, for SQLite files written before them
# (PostgreSQL: migration 0002).
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("sentences", "header", "TEXT"),
    ("documents", "version", "INTEGER NOT NULL DEFAULT 1"),
    ("documents", "lineage", "TEXT NOT NULL DEFAULT ''"),
    ("documents", "replaces", "TEXT"),
    ("documents", "reused_chunks", "INTEGER NOT NULL DEFAULT 0"),
    ("documents", "tenant", "TEXT NOT NULL DEFAULT 'default'"),
    ("documents", "access", "TEXT NOT NULL DEFAULT '[]'"),
)


class ChunkStore(DocumentRecords):
    """Documents, chunks and sentences in SQL tables: the queries both backends run.

    A backend class puts its database class first (`SqliteDatabase`, `PostgresDatabase`),
    which gives the primitives `stores.sql.SqlRecords` declares, and says what `_log` does.
    Document rows and versions are `stores.documents.DocumentRecords`.
    """

    # Chunks

    def add_chunks(
        self, doc_id: str, drafts: Sequence[ChunkDraft], vectors: npt.NDArray[np.float32]
    ) -> list[int]:
        """Store a batch of a document's chunks with their vectors; returns their ids."""
        if len(drafts) != len(vectors):
            raise ValueError("one vector per chunk")
        with self.transaction() as db:
            return [_insert_chunk(db, doc_id, d, v) for d, v in zip(drafts, vectors, strict=True)]

    def clear_chunks(self, doc_id: str) -> list[int]:
        """Remove a document's chunks and sentences (a retried job starts clean); returns the
        removed chunk ids."""
        ids = self.chunk_ids(doc_id)
        with self.transaction() as db:
            self._log(db, "remove", doc_id)
            db.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
            db.execute("DELETE FROM sentences WHERE document_id = ?", (doc_id,))
        return ids

    def add_sentences(
        self, doc_id: str, drafts: Sequence[SentenceDraft], vectors: npt.NDArray[np.float32]
    ) -> None:
        """Store a batch of a document's sentences with their vectors."""
        if len(drafts) != len(vectors):
            raise ValueError("one vector per sentence")
        rows = [
            (doc_id, d.start, d.end, d.text, d.page, json.dumps(list(d.title_path)),
             np.asarray(v, dtype=SENTENCE_DTYPE).tobytes(), d.header)
            for d, v in zip(drafts, vectors, strict=True)
        ]
        with self.transaction() as db:
            db.executemany(
                'INSERT INTO sentences (document_id, start, "end", text, page, title_path, '
                "vector, header) VALUES (?,?,?,?,?,?,?,?)", rows)

    def sentences_within(
        self, spans: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Sentence, npt.NDArray[np.float32]]]:
        """Sentences overlapping each (document id, start, end) span, once each, with their
        vectors (float32), in document order."""
        found: dict[int, tuple[Sentence, npt.NDArray[np.float32]]] = {}
        for doc_id, start, end in spans:
            rows = self._query(
                'SELECT id, document_id, start, "end", text, page, title_path, vector, header '
                'FROM sentences WHERE document_id = ? AND start < ? AND "end" > ? ORDER BY start',
                (doc_id, end, start),
            )
            for r in rows:
                sentence = Sentence(id=int(r[0]), document_id=r[1], start=r[2], end=r[3],
                                    text=r[4], page=r[5], title_path=tuple(json.loads(r[6])),
                                    header=r[8])
                vector = np.frombuffer(r[7], dtype=SENTENCE_DTYPE).astype(np.float32)
                found[sentence.id] = (sentence, vector)
        return sorted(found.values(), key=lambda item: (item[0].document_id, item[0].start))

    def chunk_vectors_by_text(
        self, doc_id: str, texts: Sequence[str]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Vectors of the document's chunks whose text is one of `texts`, by text (a new
        version reuses them rather than embed the same text again)."""
        rows = self._rows_by_text("SELECT text, vector FROM chunks", doc_id, texts)
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    def sentence_vectors_by_text(
        self, doc_id: str, texts: Sequence[str]
    ) -> dict[tuple[str, str | None], npt.NDArray[np.float32]]:
        """Vectors (float32) of the document's sentences whose text is one of `texts`, by
        (text, header): a table row is embedded with its header."""
        rows = self._rows_by_text("SELECT text, header, vector FROM sentences", doc_id, texts)
        return {(r[0], r[1]): np.frombuffer(r[2], dtype=SENTENCE_DTYPE).astype(np.float32)
                for r in rows}

    def _rows_by_text(
        self, select: str, doc_id: str, texts: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        unique = list(dict.fromkeys(texts))
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            rows.extend(self._query(f"{select} WHERE document_id = ? AND text IN "
                                    f"({','.join('?' * len(part))})", [doc_id, *part]))
        return rows

    def sentence_count(self, doc_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM sentences WHERE document_id = ?", (doc_id,))
        return int(rows[0][0])

    def delete_document(self, doc_id: str) -> list[int]:
        """Remove a document and its chunks; returns the removed chunk ids."""
        ids = self.chunk_ids(doc_id)
        with self.transaction() as db:
            self._log(db, "remove", doc_id)
            db.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
            db.execute("DELETE FROM sentences WHERE document_id = ?", (doc_id,))
            db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
        return ids

    def chunk_ids(self, doc_id: str) -> list[int]:
        rows = self._query("SELECT id FROM chunks WHERE document_id = ? ORDER BY id", (doc_id,))
        return [int(r[0]) for r in rows]

    def get_chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        out: dict[int, Chunk] = {}
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            rows = self._query(
                "SELECT id, document_id, ordinal, text, start, \"end\", page, title_path, "
                f"token_count FROM chunks WHERE id IN ({marks})",
                part,
            )
            for r in rows:
                out[int(r[0])] = Chunk(
                    id=int(r[0]), document_id=r[1], ordinal=r[2], text=r[3], start=r[4],
                    end=r[5], page=r[6], title_path=tuple(json.loads(r[7])), token_count=r[8],
                )
        return out

    def vectors(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Stored vectors of the given chunk ids, (len(ids), dim), in the order given."""
        marks = ",".join("?" * len(ids))
        rows = dict(self._query(f"SELECT id, vector FROM chunks WHERE id IN ({marks})",
                                [int(i) for i in ids]))
        return np.stack([np.frombuffer(rows[int(i)], dtype=np.float32) for i in ids])

    def filenames(self, doc_ids: Sequence[str]) -> dict[str, str]:
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        rows = self._query(f"SELECT id, filename FROM documents WHERE id IN ({marks})", doc_ids)
        return {r[0]: r[1] for r in rows}

    def searchable_count(self) -> int:
        return int(self._query(f"SELECT COUNT(*) FROM ({SEARCHABLE}) AS searchable")[0][0])

    def searchable_mark(self) -> str:
        """A checksum of the searchable chunk ids ("count:max:sum mod 2^63"), which the saved
        index records: equal counts of different chunks (a swap committed, its index save
        lost) still differ. Ids only grow, so a changed set changes its max or its sum."""
        row = self._query("SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(id), 0) FROM "
                          f"({SEARCHABLE}) AS searchable")[0]
        return f"{int(row[0])}:{int(row[1])}:{int(row[2]) % 2**63}"

    def searchable_ids(
        self, collection: str | None = None, document_ids: Sequence[str] | None = None,
        reader: Reader = EVERYONE,
    ) -> npt.NDArray[np.int64]:
        """Ids of searchable chunks `reader` may read, optionally limited to a collection or
        documents."""
        where, args = _searchable_where(collection, document_ids, reader)
        return self._ids(f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
                         f"WHERE {where}", args)

    def readable_ids(self, query: Query) -> npt.NDArray[np.int64] | None:
        """The searchable chunk ids `query` may search (its reader's, collection, documents
        and metadata filter), or None when that is every searchable chunk."""
        reader = query.reader or EVERYONE
        if not (query.collection or query.document_ids or query.metadata):
            if reader.everything:
                return None
            readable, args = reader_clause(reader, "d")
            hidden = self._query("SELECT COUNT(*) FROM documents d WHERE d.state = 'indexed' "
                                 f"AND NOT ({readable})", args)[0][0]
            if not hidden:  # the reader may read every indexed document: no filter to apply
                return None
        if query.metadata is None:
            return self.searchable_ids(query.collection, query.document_ids, reader)
        where, args = _searchable_where(query.collection, query.document_ids, reader)
        rows = self._query(f"SELECT d.id, d.metadata FROM documents d WHERE {where}", args)
        kept = query.metadata.select([(r[0], json.loads(r[1] or "{}")) for r in rows])
        parts = [self._ids(f"SELECT id FROM chunks WHERE document_id IN "
                           f"({','.join('?' * len(kept[i:i + 500]))})", kept[i:i + 500])
                 for i in range(0, len(kept), 500)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _ids(self, sql: str, args: Sequence[Any]) -> npt.NDArray[np.int64]:
        return np.array([r[0] for r in self._query(sql, args)], dtype=np.int64)

    def searchable_vectors(self, batch: int = 4096) -> Iterator[tuple[Any, Any]]:
        """(ids int64 (n,), vectors float32 (n, dim)) in batches, for index rebuilds."""
        last = -1
        while True:
            rows = self._query(
                "SELECT c.id, c.vector FROM chunks c JOIN documents d ON d.id = c.document_id "
                "WHERE d.state = 'indexed' AND c.id > ? ORDER BY c.id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            last = int(ids[-1])
            yield ids, vectors

    def searchable_vectors_of(
        self, ids: Sequence[int]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Those of the given chunk ids that are searchable now, with their vectors."""
        found: list[int] = []
        vectors: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            rows = self._query(
                "SELECT c.id, c.vector FROM chunks c JOIN documents d ON d.id = c.document_id "
                f"WHERE d.state = 'indexed' AND c.id IN ({','.join('?' * len(part))}) "
                "ORDER BY c.id", part)
            found.extend(int(r[0]) for r in rows)
            vectors.extend(np.frombuffer(r[1], dtype=np.float32) for r in rows)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.array(found, dtype=np.int64), np.stack(vectors)

    def searchable_texts(self) -> tuple[npt.NDArray[np.int64], list[str]]:
        """All searchable chunk ids and texts, for the BM25 index."""
        rows = self._query(
            "SELECT c.id, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.state = 'indexed' ORDER BY c.id"
        )
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

def _searchable_where(
    collection: str | None, document_ids: Sequence[str] | None, reader: Reader
) -> tuple[str, list[Any]]:
    """The condition on `documents d` for indexed rows `reader` may read, narrowed."""
    readable, args = reader_clause(reader, "d")
    sql = f"d.state = 'indexed' AND {readable}"
    if collection:
        sql += " AND d.collection = ?"
        args.append(collection)
    if document_ids:
        sql += f" AND d.id IN ({','.join('?' * len(document_ids))})"
        args.extend(document_ids)
    return sql, args


INSERT_CHUNK = (
    'INSERT INTO chunks (document_id, ordinal, text, start, "end", page, title_path, '
    "token_count, vector) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id"
)

def chunk_row(doc_id: str, d: ChunkDraft, vector: npt.NDArray[np.float32]) -> tuple[Any, ...]:
    """The values of INSERT_CHUNK for one chunk."""
    return (doc_id, d.ordinal, d.text, d.start, d.end, d.page, json.dumps(list(d.title_path)),
            d.token_count, np.asarray(vector, dtype=np.float32).tobytes())

def _insert_chunk(
    db: Any, doc_id: str, d: ChunkDraft, vector: npt.NDArray[np.float32]
) -> int:
    return int(db.execute(INSERT_CHUNK, chunk_row(doc_id, d, vector)).fetchone()[0])


class SqliteChunkStore(SqliteDatabase, ChunkStore):
    """The chunk store in SQLite (WAL mode); safe to share between threads and processes."""

    SCHEMA = SCHEMA
    SCHEMA_VERSION = 3
    ADDED_COLUMNS = ADDED_COLUMNS

    def _log(self, db: Any, op: str, doc_id: str) -> None:
        """Nothing to record: only the PostgreSQL store keeps an index change log."""

    def _after_upgrade(self, db: Any, added: list[tuple[str, str]]) -> None:
        """Documents stored before versions are each the first version of their own lineage."""
        if ("documents", "lineage") in added:
            db.execute("UPDATE documents SET lineage = id WHERE lineage = ''")


def build_store(settings: Settings) -> ChunkStore:
    """PostgreSQL when `RAG_DATABASE_URL` is set, else SQLite in the data directory."""
    if settings.database_url:
        from rag.stores.chunks_postgres import PgChunkStore

        return PgChunkStore(settings.database_url)
    return SqliteChunkStore(settings.store_path)

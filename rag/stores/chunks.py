"""The chunk store: documents and chunks with text, offsets and vectors.

It is the source of truth: the FAISS index and the BM25 index are rebuilt from it. Only
chunks of documents in state `indexed` are searchable, so a document becomes visible in
one transaction (`mark_indexed`) and a crash mid-ingest leaves nothing half-searchable.
The SQL is portable and lives in `ChunkStore`, the type callers use; `SqliteChunkStore` (here)
runs it on SQLite in the data directory, `PgChunkStore` (rag.stores.chunks_postgres) on
PostgreSQL, where it also writes the index change log. `build_store` picks one.

A document's state changes only through `set_state` (guarded by TRANSITIONS) and
`mark_indexed`; `put_document` creates it (queued, or processing for `rag ingest`).
"""

from __future__ import annotations

import json
import logging
import time
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from rag.settings import Settings
from rag.stores.sql import SqlRecords
from rag.stores.sqlite import SqliteDatabase
from rag.types import Chunk, ChunkDraft, Document, Sentence, SentenceDraft

log = logging.getLogger(__name__)

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
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_collection ON documents(collection);
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
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sentences_document ON sentences(document_id, start);
"""

# For each state, the states a document may reach it from (`set_state` refuses the rest and
# leaves the row as it is). processing -> queued: its job was interrupted or will be retried;
# indexed -> processing: re-processed (`rag reindex --reembed`, a retried job); failed ->
# cancelled or queued: the engine marks a stopped job's document failed, then the runner says why.
TRANSITIONS: dict[str, frozenset[str]] = {
    "processing": frozenset({"queued", "failed", "cancelled", "indexed", "processing"}),
    "queued": frozenset({"processing", "failed", "cancelled"}),
    "failed": frozenset({"processing"}),
    "cancelled": frozenset({"queued", "processing", "failed"}),
}

SEARCHABLE = "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id " \
    "WHERE d.state = 'indexed'"

DOC_COLUMNS = (
    "id, filename, content_type, size, collection, metadata, pages, chunk_count, state, "
    "error, created_at, updated_at"
)


class ChunkStore(SqlRecords):
    """Documents, chunks and sentences in SQL tables: the queries both backends run.

    A backend class puts its database class first (`SqliteDatabase`, `PostgresDatabase`),
    which gives the primitives `stores.sql.SqlRecords` declares, and says what `_log` does.
    """

    @abstractmethod
    def _log(self, db: Any, op: str, doc_id: str) -> None:
        """Record the document's chunk ids as added or removed, inside transaction `db`."""

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run statements in one immediate transaction."""
        with self.transaction() as db:
            for sql, args in statements:
                db.execute(sql, args)

    # Documents

    def put_document(self, doc: Document) -> Document:
        """Insert or update a document row (created_at is kept on update)."""
        now = time.time()
        existing = self.get_document(doc.id)
        created = existing.created_at if existing else (doc.created_at or now)
        doc = replace(doc, created_at=created, updated_at=now)
        updates = ", ".join(f"{c} = excluded.{c}" for c in DOC_COLUMNS.split(", ")[1:])
        self._write([(
            f"INSERT INTO documents ({DOC_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}",
            (
                doc.id, doc.filename, doc.content_type, doc.size, doc.collection,
                json.dumps(dict(doc.metadata)), doc.pages, doc.chunk_count, doc.state,
                doc.error, doc.created_at, doc.updated_at,
            ),
        )])
        return doc

    def get_document(self, doc_id: str) -> Document | None:
        rows = self._query(f"SELECT {DOC_COLUMNS} FROM documents WHERE id = ?", (doc_id,))
        return _document(rows[0]) if rows else None

    def list_documents(
        self, collection: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[Document], int]:
        where, args = ("WHERE collection = ?", [collection]) if collection else ("", [])
        total = self._query(f"SELECT COUNT(*) FROM documents {where}", args)[0][0]
        rows = self._query(
            f"SELECT {DOC_COLUMNS} FROM documents {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [_document(r) for r in rows], int(total)

    def set_state(self, doc_id: str, state: str, error: str | None = None) -> bool:
        """Move a document to `state` when TRANSITIONS allow it from where it is; False (and
        a warning) when they do not or the document is gone."""
        before = sorted(TRANSITIONS[state])
        marks = ",".join("?" * len(before))
        changed = self.execute(
            f"UPDATE documents SET state = ?, error = ?, updated_at = ? WHERE id = ? "
            f"AND state IN ({marks})", (state, error, time.time(), doc_id, *before))
        if not changed:
            doc = self.get_document(doc_id)
            log.warning("document %s stays %s (not %s)", doc_id[:12],
                        doc.state if doc else "deleted", state)
        return bool(changed)

    def collections(self) -> set[str]:
        return {r[0] for r in self._query("SELECT DISTINCT collection FROM documents")}

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
             np.asarray(v, dtype=SENTENCE_DTYPE).tobytes())
            for d, v in zip(drafts, vectors, strict=True)
        ]
        with self.transaction() as db:
            db.executemany(
                'INSERT INTO sentences (document_id, start, "end", text, page, title_path, '
                "vector) VALUES (?,?,?,?,?,?,?)", rows)

    def sentences_within(
        self, spans: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Sentence, npt.NDArray[np.float32]]]:
        """Sentences overlapping each (document id, start, end) span, once each, with their
        vectors (float32), in document order."""
        found: dict[int, tuple[Sentence, npt.NDArray[np.float32]]] = {}
        for doc_id, start, end in spans:
            rows = self._query(
                'SELECT id, document_id, start, "end", text, page, title_path, vector '
                'FROM sentences WHERE document_id = ? AND start < ? AND "end" > ? ORDER BY start',
                (doc_id, end, start),
            )
            for r in rows:
                sentence = Sentence(id=int(r[0]), document_id=r[1], start=r[2], end=r[3],
                                    text=r[4], page=r[5], title_path=tuple(json.loads(r[6])))
                vector = np.frombuffer(r[7], dtype=SENTENCE_DTYPE).astype(np.float32)
                found[sentence.id] = (sentence, vector)
        return sorted(found.values(), key=lambda item: (item[0].document_id, item[0].start))

    def sentence_count(self, doc_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM sentences WHERE document_id = ?", (doc_id,))
        return int(rows[0][0])

    def mark_indexed(self, doc_id: str, pages: int | None) -> int:
        """Make a document's chunks searchable in one transaction; returns its chunk count."""
        with self.transaction() as db:
            count = db.execute("SELECT COUNT(*) FROM chunks WHERE document_id = ?",
                               (doc_id,)).fetchone()[0]
            db.execute(
                "UPDATE documents SET state = 'indexed', error = NULL, chunk_count = ?, "
                "pages = ?, updated_at = ? WHERE id = ?", (count, pages, time.time(), doc_id))
            self._log(db, "add", doc_id)
        return int(count)

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

    def searchable_ids(
        self, collection: str | None = None, document_ids: Sequence[str] | None = None
    ) -> npt.NDArray[np.int64]:
        """Ids of searchable chunks, optionally limited to a collection or documents."""
        sql, args = SEARCHABLE, []
        if collection:
            sql += " AND d.collection = ?"
            args.append(collection)
        if document_ids:
            sql += f" AND d.id IN ({','.join('?' * len(document_ids))})"
            args.extend(document_ids)
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

def _document(row: tuple[Any, ...]) -> Document:
    meta: Mapping[str, Any] = json.loads(row[5]) if row[5] else {}
    return Document(
        id=row[0], filename=row[1], content_type=row[2], size=row[3], collection=row[4],
        metadata=meta, pages=row[6], chunk_count=row[7], state=row[8], error=row[9],
        created_at=row[10], updated_at=row[11],
    )


class SqliteChunkStore(SqliteDatabase, ChunkStore):
    """The chunk store in SQLite (WAL mode); safe to share between threads and processes."""

    SCHEMA = SCHEMA

    def _log(self, db: Any, op: str, doc_id: str) -> None:
        """Nothing to record: only the PostgreSQL store keeps an index change log."""


def build_store(settings: Settings) -> ChunkStore:
    """PostgreSQL when `RAG_DATABASE_URL` is set, else SQLite in the data directory."""
    if settings.database_url:
        from rag.stores.chunks_postgres import PgChunkStore

        return PgChunkStore(settings.database_url)
    return SqliteChunkStore(settings.store_path)

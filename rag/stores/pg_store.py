"""The chunk store and the upload store on PostgreSQL (`RAG_DATABASE_URL`).

`PgChunkStore` runs `ChunkStore`'s SQL on PostgreSQL and adds the index change log: every
transaction that makes chunks searchable or removes them appends their ids to `index_log`,
under one advisory lock so that sequence numbers commit in order (a follower that has read
up to N never misses a smaller one committed later), and NOTIFYs the API processes.
`PgUploadStore` keeps the original bytes in the database, so any worker can parse them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from rag.documents.chunking import ChunkDraft
from rag.errors import NotFound
from rag.stores.chunks import INSERT_CHUNK, ChunkStore, chunk_row
from rag.stores.conversations import SqliteConversations
from rag.stores.postgres import PostgresDatabase, placeholders
from rag.stores.uploads import BLOCK
from rag.types import Chunk, Sentence

K = TypeVar("K")
V = TypeVar("V")
Span = tuple[str, int, int]  # (document id, start, end)

CHANNEL = "rag_index"
LOG_LOCK = "rag:index-log"


class PgChunkStore(PostgresDatabase, ChunkStore):
    """Documents, chunks, sentences and the index change log in PostgreSQL.

    What asks read (chunks by id, their sentences, file names) is kept in a bounded LRU as
    well: chunk ids are never reused, so it never goes stale, it saves round trips on popular
    sources, and while the database is away asks over recently read sources still answer.
    """

    def __init__(self, url: str, read_cache: int = 5_000) -> None:
        PostgresDatabase.__init__(self, url)
        self._chunks: LRUCache[int, Chunk] = LRUCache(read_cache)
        self._sentences: LRUCache[Span, list[Any]] = LRUCache(read_cache)
        self._names: LRUCache[str, str] = LRUCache(read_cache)
        self._cache_lock = threading.Lock()

    def _read_through(
        self, cache: LRUCache[K, V], keys: Sequence[K], read: Callable[[list[K]], dict[K, V]]
    ) -> dict[K, V]:
        """The cached values of `keys`, reading (and keeping) the missing ones in one call."""
        with self._cache_lock:
            found = {k: cache[k] for k in keys if k in cache}
        missing = [k for k in keys if k not in found]
        if missing:
            fresh = read(missing)
            with self._cache_lock:
                cache.update(fresh)
            found.update(fresh)
        return found

    def get_chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        return self._read_through(self._chunks, ids, super().get_chunks)

    def filenames(self, doc_ids: Sequence[str]) -> dict[str, str]:
        return self._read_through(self._names, doc_ids, super().filenames)

    def sentences_within(
        self, spans: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Sentence, npt.NDArray[np.float32]]]:
        base = super().sentences_within
        per_span = self._read_through(
            self._sentences, spans, lambda missing: {s: base([s]) for s in missing})
        found = {sentence.id: (sentence, vector)
                 for rows in per_span.values() for sentence, vector in rows}
        return sorted(found.values(), key=lambda item: (item[0].document_id, item[0].start))

    def delete_document(self, doc_id: str) -> list[int]:
        ids = super().delete_document(doc_id)
        with self._cache_lock:
            for key in [k for k in self._sentences if k[0] == doc_id]:
                del self._sentences[key]
            self._names.pop(doc_id, None)
        return ids

    def _log(self, db: Any, op: str, doc_id: str) -> None:
        self.serialize(db, LOG_LOCK)
        db.execute("INSERT INTO index_log (op, chunk_id, at) SELECT ?, id, ? FROM chunks "
                   "WHERE document_id = ? ORDER BY id", (op, time.time(), doc_id))
        db.execute(f"NOTIFY {CHANNEL}")  # delivered at commit, to every listening process

    def add_chunks(
        self, doc_id: str, drafts: Sequence[ChunkDraft], vectors: npt.NDArray[np.float32]
    ) -> list[int]:
        """`ChunkStore.add_chunks` in one round trip per batch (psycopg's executemany)."""
        if len(drafts) != len(vectors):
            raise ValueError("one vector per chunk")
        rows = [chunk_row(doc_id, d, v) for d, v in zip(drafts, vectors, strict=True)]
        ids: list[int] = []
        with self.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(placeholders(INSERT_CHUNK), rows, returning=True)
            while True:
                row = cur.fetchone()
                assert row is not None
                ids.append(int(row[0]))
                if not cur.nextset():
                    return ids

    def log_position(self) -> int:
        """The newest sequence number in the change log (0 when it is empty)."""
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM index_log")[0][0])

    def log_start(self) -> int:
        """The oldest sequence number still kept (0 when the log is empty)."""
        return int(self._query("SELECT COALESCE(MIN(seq), 0) FROM index_log")[0][0])

    def changes_since(self, seq: int, limit: int = 20_000) -> list[tuple[int, str, int]]:
        """(seq, op, chunk id) after `seq`, oldest first."""
        rows = self._query("SELECT seq, op, chunk_id FROM index_log WHERE seq > ? "
                           "ORDER BY seq LIMIT ?", (seq, limit))
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    def prune_log(self, older_than_s: float) -> int:
        """Forget changes older than this, never the newest (it tells where the log is); a
        process further behind rebuilds its index."""
        return self.execute("DELETE FROM index_log WHERE at < ? AND seq < "
                            "(SELECT MAX(seq) FROM index_log)", (time.time() - older_than_s,))


class PgUploadStore(PostgresDatabase):
    """Original uploads in `upload_parts`, in parts of 1 MiB (bounded memory both ways)."""

    def __init__(self, url: str, scratch: Path) -> None:
        super().__init__(url)
        self.scratch = scratch  # where a worker writes a copy to parse

    def has(self, doc_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM upload_parts WHERE document_id = ? AND part = 0",
                                (doc_id,)))

    def keep(self, source: Path, doc_id: str) -> bool:
        """Store the file's bytes in one transaction unless they are there; True when stored."""
        with self.transaction() as db:
            self.serialize(db, f"upload:{doc_id}")
            if db.execute("SELECT 1 FROM upload_parts WHERE document_id = ? AND part = 0",
                          (doc_id,)).fetchone():
                return False
            with open(source, "rb") as f:
                part = 0
                while block := f.read(BLOCK):
                    db.execute("INSERT INTO upload_parts (document_id, part, data) "
                               "VALUES (?, ?, ?)", (doc_id, part, block))
                    part += 1
        return True

    def adopt(self, source: Path, doc_id: str) -> bool:
        """Take a staged upload (its file is removed by the caller); True when stored."""
        return self.keep(source, doc_id)

    @contextlib.contextmanager
    def local(self, doc_id: str) -> Iterator[Path]:
        """A local copy of the upload for the parser, removed afterwards."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{doc_id[:16]}.", dir=self.scratch)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                parts = 0
                while rows := self._query("SELECT data FROM upload_parts WHERE document_id = ? "
                                          "AND part = ?", (doc_id, parts)):
                    out.write(rows[0][0])
                    parts += 1
            if parts == 0:
                raise NotFound(f"The upload of document {doc_id} is not in the database.",
                               "Upload the file again.")
            yield path
        finally:
            path.unlink(missing_ok=True)

    def remove(self, doc_id: str) -> None:
        self.execute("DELETE FROM upload_parts WHERE document_id = ?", (doc_id,))


class PgConversations(PostgresDatabase, SqliteConversations):
    """Conversations, answers and feedback in PostgreSQL (the same SQL as on SQLite)."""

    def __init__(self, url: str, ttl_s: int) -> None:
        PostgresDatabase.__init__(self, url)
        self.ttl_s = ttl_s

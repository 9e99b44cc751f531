"""The chunk store on PostgreSQL (`RAG_DATABASE_URL`), with the index change log.

`PgChunkStore` runs `ChunkStore`'s SQL on PostgreSQL and adds the index change log: every
transaction that makes chunks searchable or removes them appends their ids to `index_log`,
under one advisory lock (LOG_LOCK) so that sequence numbers commit in order (a follower that
has read up to N never misses a smaller one committed later), and NOTIFYs CHANNEL, which the
API processes listen on (rag.index.log_follower).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from rag.stores.chunks import INSERT_CHUNK, ChunkStore, Promotion, chunk_row
from rag.stores.postgres import PostgresDatabase, placeholders
from rag.types import Chunk, ChunkDraft, Sentence

K = TypeVar("K")
V = TypeVar("V")
Span = tuple[str, int, int]  # (document id, start, end)

CHANNEL = "rag_index"  # NOTIFY channel of the index change log
LOG_LOCK = "rag:index-log"  # advisory lock key that orders the log's writers
LOG_PAGE = ("SELECT seq, op, chunk_id, xmin::text FROM index_log WHERE seq > ? "
            "ORDER BY seq LIMIT ?")


class PgChunkStore(PostgresDatabase, ChunkStore):
    """Documents, chunks, sentences and the index change log in PostgreSQL.

    What asks read (chunks by id, their sentences, file names) is kept in a bounded LRU as
    well: chunk ids are never reused, and removed ones are evicted (here and by the log
    follower), so it never goes stale; it saves round trips on popular sources, and while the
    database is away asks over recently read sources still answer.
    """

    def __init__(self, url: str, read_cache: int = 5_000) -> None:
        super().__init__(url)
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
        self._forget([doc_id])
        return ids

    def delete_lineage(self, doc_id: str) -> tuple[list[str], list[int]]:
        doc_ids, chunk_ids = super().delete_lineage(doc_id)
        self._forget(doc_ids)
        self.forget_chunks(chunk_ids)
        return doc_ids, chunk_ids

    def promote(self, doc_id: str, pages: int | None) -> Promotion:
        done = super().promote(doc_id, pages)
        self._forget(done.replaced)
        self.forget_chunks(done.removed_chunks)
        return done

    def forget_chunks(self, chunk_ids: Iterable[int]) -> None:
        """Drop removed chunks from the read cache (the log follower calls it for removals
        other processes made), so that a removed chunk is never served from it."""
        with self._cache_lock:
            for chunk_id in chunk_ids:
                self._chunks.pop(chunk_id, None)

    def _forget(self, doc_ids: Sequence[str]) -> None:
        """Drop what the read cache holds of these documents (their sentences and names)."""
        gone = set(doc_ids)
        with self._cache_lock:
            for key in [k for k in self._sentences if k[0] in gone]:
                del self._sentences[key]
            for doc_id in gone:
                self._names.pop(doc_id, None)

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
        """(seq, op, chunk id) after `seq`, oldest first: about `limit` of them, never ending
        inside one transaction's block (a promote's removals and additions are applied as
        one). A transaction's entries are consecutive (LOG_LOCK) and share its `xmin`."""
        rows = self._query(LOG_PAGE, (seq, limit))
        full = len(rows) == limit
        while full and rows:  # the page may end inside a block: take the rest of it
            block = rows[-1][3]
            more = self._query(LOG_PAGE, (rows[-1][0], limit))
            tail = list(itertools.takewhile(partial(_in_block, block), more))
            rows += tail
            full = len(tail) == limit
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    def prune_log(self, older_than_s: float) -> int:
        """Forget changes older than this, never the newest (it tells where the log is); a
        process further behind rebuilds its index."""
        return self.execute("DELETE FROM index_log WHERE at < ? AND seq < "
                            "(SELECT MAX(seq) FROM index_log)", (time.time() - older_than_s,))


def _in_block(block: str, row: tuple[Any, ...]) -> bool:
    """Whether a log row (seq, op, chunk id, xmin) was written by transaction `block`."""
    return bool(row[3] == block)

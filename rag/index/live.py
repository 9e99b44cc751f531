"""This process's vector index, kept current: loaded (or rebuilt from the store) at start,
changed only under the writer lease, refreshed from other processes' saves, and with
PostgreSQL built per process and followed from the store's change log.

`LiveIndex` is what the rest of the engine holds: the ask path searches `index` and calls
`refresh()`; the document indexer adds and removes vectors inside `writing()`; /ready reads
`status()`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.errors import LOADING_HINT, IndexUnreadable, NotReady
from rag.index.vectors import FaissIndex, Ids, VectorIndex, Vectors, read_manifest
from rag.index.writer import WriterLease
from rag.settings import Settings
from rag.stores.chunks import ChunkStore

if TYPE_CHECKING:
    from rag.index.log_follower import IndexFollower

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 0.5  # how often an ask looks for an index saved by another process
ADD_BATCH = 4096


@dataclass(frozen=True)
class FollowerStatus:
    """Where this process stands in the change log (PostgreSQL mode)."""

    applied: int
    latest: int
    behind: int
    error: str | None
    checked_at: float | None  # time.time() of the last read of the log


@dataclass(frozen=True)
class IndexStatus:
    """What /ready says about the index."""

    readable: bool
    problem: str | None
    follower: FollowerStatus | None


class LiveIndex:
    """The index of one process; `load()` before use."""

    def __init__(self, settings: Settings, store: ChunkStore) -> None:
        """Cheap: the index itself is made in `load()`, once the embedder's dimension is known."""
        self.settings = settings
        self.store = store
        # a shared lease only in embedded mode with Redis; with PostgreSQL each process has its
        # own index
        shared = None if settings.database_url else settings.redis_url
        self.lease = WriterLease(shared, settings.writer_lease_s)
        self.follower: IndexFollower | None = None  # with PostgreSQL, in serving processes
        self._index: FaissIndex | None = None
        self._last_version_check = 0.0

    @property
    def index(self) -> VectorIndex:
        """The loaded index; NotReady before `load()`."""
        return self._faiss()

    def _faiss(self) -> FaissIndex:
        """The index as the FAISS files this module loads and refreshes."""
        if self._index is None:
            raise NotReady("The index is not loaded yet.", LOADING_HINT)
        return self._index

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def load(self, dimension: int, fresh: bool = False, follow: bool = True) -> None:
        """Read the saved index, or rebuild it from the store where the two disagree.

        `fresh` ignores the saved index (after an embedding-model change). With PostgreSQL,
        `follow` builds this process's own index and follows the change log in a thread; a
        worker (`follow=False`) writes to the store only and keeps an empty index.
        """
        s = self.settings
        self._index = FaissIndex(s.index_dir, s.embedding_model, dimension,
                                 s.approximate_index_threshold, s.ivf_nprobe, s.index_device)
        if s.database_url:
            if follow:
                self._follow(fresh)
            return
        readable = fresh or self._read_saved()
        with self.store.readable():
            agrees = readable and (fresh or self._agrees())
        if not agrees:
            log.warning("the saved index (%d vectors) disagrees with the chunk store; "
                        "rebuilding", self.index.count)
            self.rebuild()

    def _agrees(self) -> bool:
        """Whether the loaded index holds what the store makes searchable: the checksum of
        chunk ids it was saved with (its count alone, for an index saved before checksums)."""
        index = self._faiss()
        if index.store_mark:
            return index.store_mark == self.store.searchable_mark()
        return index.count == self.store.searchable_count()

    def reconcile(self) -> bool:
        """Rebuild the index when its last save does not match the store (a writer died
        between committing a swap and saving the index); True when it rebuilt. Embedded mode;
        with PostgreSQL the change log carries every committed change."""
        if self.settings.database_url:
            return False
        with self.writing():
            manifest = read_manifest(self._faiss().directory)
            if manifest is not None and manifest.store_mark == self.store.searchable_mark():
                return False
            log.warning("the saved index does not match the chunk store; rebuilding")
            self.index.rebuild(self.store.searchable_vectors())
            self._save()
        return True

    def _follow(self, fresh: bool) -> None:
        """Resume the saved index from the change log, or build it from the store; then
        follow the log in a thread."""
        from rag.index.log_follower import IndexFollower
        from rag.stores.chunks_postgres import PgChunkStore

        assert isinstance(self.store, PgChunkStore)
        s, index = self.settings, self._faiss()
        follower = IndexFollower(self.store, index, self.lease.local, s.index_catchup_s,
                                 s.index_save_every_s, s.index_log_keep_s)
        started = time.perf_counter()
        resumed = not fresh and self._read_saved() and follower.can_resume()
        if resumed:
            follower.catch_up()
            resumed = index.count == self.store.searchable_count()
        if not resumed:
            follower.rebuild()
        log.info("index %s: %d vectors at change %d in %.2f s",
                 "caught up" if resumed else "built from the store", index.count,
                 index.log_seq, time.perf_counter() - started)
        follower.start()
        self.follower = follower

    def _read_saved(self) -> bool:
        """Read the saved index; False when it is corrupt or truncated (to be rebuilt)."""
        try:
            self._faiss().load()
        except IndexUnreadable as exc:
            log.warning("%s; rebuilding the index from the chunk store", exc.message)
            return False
        return True

    def close(self) -> None:
        """Stop following the log (saving the index)."""
        if self.follower is not None:
            self.follower.stop()
            self.follower = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lease; a shared lease first applies what others saved meanwhile."""
        with self.lease.held():
            if self.lease.shared:
                self.refresh(force=True)
            yield

    def refresh(self, force: bool = False) -> None:
        """Pick up an index version saved by another process (checked at most every 0.5 s);
        with PostgreSQL, `force` applies the change log now."""
        if self.settings.database_url:
            if force and self.follower is not None:
                self.follower.catch_up()
            return
        now = time.monotonic()
        if not force and now - self._last_version_check < REFRESH_EVERY_S:
            return
        self._last_version_check = now
        index = self._faiss()
        manifest = read_manifest(index.directory)
        if manifest is not None and manifest.version != index.version:
            index.load()

    def rebuild(self) -> None:
        """Rebuild from every searchable vector in the store and save, under the lease; with
        PostgreSQL, this process's index from the store at the log's position."""
        if self.settings.database_url:
            if self.follower is not None:
                self.follower.rebuild()  # under the same process lock
            return
        self._replace(self.store.searchable_vectors())

    def clear(self) -> None:
        """Empty the index and save it, under the lease (before re-embedding every document)."""
        self._replace([])

    def _replace(self, batches: Iterable[tuple[Ids, Vectors]]) -> None:
        with self.writing():
            self.index.rebuild(batches)
            self._save()

    def _save(self) -> None:
        """Save, recording the store's checksum of searchable chunks (inside `writing()`)."""
        index = self._faiss()
        index.store_mark = self.store.searchable_mark()
        index.save()

    def add_document(self, doc_id: str) -> None:
        """Add a document's stored vectors and save (inside `writing()`)."""
        index = self.index
        ids = np.array(self.store.chunk_ids(doc_id), dtype=np.int64)
        for start in range(0, len(ids), ADD_BATCH):
            part = ids[start : start + ADD_BATCH]
            index.add(part, self.store.vectors(part))
        if index.needs_approximate():
            index.rebuild(self.store.searchable_vectors())
        self._save()

    def swap(self, removed: Iterable[int], doc_id: str) -> None:
        """Replace one version's vectors by the next's in one step of the index (no search
        sees neither or both) and save once (inside `writing()`)."""
        index = self._faiss()
        ids = np.array(self.store.chunk_ids(doc_id), dtype=np.int64)
        parts = [self.store.vectors(ids[start : start + ADD_BATCH])
                 for start in range(0, len(ids), ADD_BATCH)]
        vectors = (np.concatenate(parts) if parts
                   else np.zeros((0, index.dimension), dtype=np.float32))
        index.swap(np.array(list(removed), dtype=np.int64), ids, vectors)
        if index.needs_approximate():
            index.rebuild(self.store.searchable_vectors())
        self._save()

    def remove(self, chunk_ids: list[int], always_save: bool = True) -> None:
        """Remove vectors by chunk id and save (inside `writing()`); with `always_save` off,
        save only when some were there."""
        index = self.index
        before = index.count
        index.remove(np.array(chunk_ids, dtype=np.int64))
        if always_save or index.count != before:
            self._save()

    def status(self) -> IndexStatus:
        """Readable from disk, and where the change log stands (blocking: reads files)."""
        problem = self._problem()
        follower = None
        if self.follower is not None:
            f = self.follower
            follower = FollowerStatus(f.applied, f.latest, f.behind(), f.error, f.checked_at)
        return IndexStatus(problem is None, problem, follower)

    def _problem(self) -> str | None:
        index = self._index
        if index is None:
            return "The index is not loaded."
        try:
            if read_manifest(index.directory) is None and index.count > 0:
                return f"The index in {index.directory} has no manifest."
        except (OSError, ValueError, TypeError, IndexUnreadable) as exc:
            return f"The index in {index.directory} is unreadable: {exc}"
        return None

"""Keeping this process's FAISS index current from the store's change log (PostgreSQL).

Workers write chunks and vectors to the store only; each API process applies the log to its
own index: at once when a NOTIFY arrives, and every `index_catchup_s` regardless (a lost
notification or connection costs at most that long). The index is saved to the process's own
data directory now and then, with the log position it holds, so the next start only catches
up. BM25 and the response cache follow the index version, which each applied batch bumps.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import psycopg

from rag.errors import RagError
from rag.index.vectors import VectorIndex
from rag.stores.chunks_postgres import CHANNEL, PgChunkStore
from rag.stores.postgres import conninfo, hidden

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


class IndexFollower:
    """Applies `index_log` to one VectorIndex; `start()` runs it in a thread."""

    def __init__(
        self, store: PgChunkStore, index: VectorIndex, lock: threading.Lock,
        catchup_s: float = 5.0, save_every_s: float = 30.0, keep_s: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.index = index
        self.lock = lock  # the process's index writer lock
        self.catchup_s = catchup_s
        self.save_every_s = save_every_s
        self.keep_s = keep_s
        self.latest = index.log_seq  # the newest entry seen in the log
        self.checked_at: float | None = None  # time.time() of the last read of the log
        self.error: str | None = None
        self._applying = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_at = self._pruned_at = time.monotonic()
        self._dirty = False

    @property
    def applied(self) -> int:
        return self.index.log_seq

    def behind(self) -> int:
        """Log entries seen but not applied yet (0 once caught up)."""
        return max(0, self.latest - self.applied)

    def can_resume(self) -> bool:
        """Whether the log still holds every change after the loaded index's position."""
        start, end = self.store.log_start(), self.store.log_position()
        if self.applied == 0:
            return end == 0  # a never-followed index: only an empty log has nothing to replay
        return end >= self.applied and (start == 0 or start <= self.applied + 1)

    def rebuild(self) -> None:
        """Build the index from the store at the log's current position."""
        with self.lock:
            position = self.store.log_position()
            self.index.rebuild(self.store.searchable_vectors())
            self.index.log_seq = position
            self.index.save()
        self.latest = position
        self.catch_up()  # what committed while it was being built (adds are idempotent)

    def catch_up(self) -> int:
        """Apply every change after the index's position; returns how many were read."""
        read = 0
        with self._applying:
            while changes := self.store.changes_since(self.applied):
                self.latest = max(self.latest, changes[-1][0])
                self._apply(changes)
                read += len(changes)
            self.latest = max(self.latest, self.applied)
            self.checked_at = time.time()
            self.error = None
        return read

    def _apply(self, changes: list[tuple[int, str, int]]) -> None:
        last: dict[int, str] = {}
        for _, op, chunk_id in changes:  # the last change of each chunk wins
            last[chunk_id] = op
        adds = [cid for cid, op in last.items() if op == "add"]
        self.store.forget_chunks(cid for cid, op in last.items() if op == "remove")
        ids, vectors = self.store.searchable_vectors_of(adds)  # deleted since: not there
        with self.lock:
            self.index.remove(np.array(list(last), dtype=np.int64))  # re-adding never doubles
            self.index.add(ids, vectors)
            if self.index.needs_approximate():
                self.index.rebuild(self.store.searchable_vectors())
            self.index.log_seq = changes[-1][0]
            self.index.mark_changed()
        self._dirty = True

    def save(self, force: bool = False) -> None:
        """Save the index locally when it changed (at most every `save_every_s`)."""
        if not self._dirty or (not force and time.monotonic() - self._saved_at < self.save_every_s):
            return
        with self.lock:
            self.index.save()
        self._dirty, self._saved_at = False, time.monotonic()

    # The thread

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rag-index-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.save(force=True)
        except Exception as exc:  # the disk may be full; the next start catches up further
            log.warning("the followed index could not be saved: %s", exc)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except (psycopg.Error, RagError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("following the index log at %s failed (%s); retrying in %.1f s",
                            hidden(self.store.url), self.error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.catchup_s)

    def _listen(self) -> None:
        with psycopg.connect(conninfo(self.store.url), autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.catch_up()  # after LISTEN: nothing committed in between is missed
            next_read = time.monotonic() + self.catchup_s
            while not self._stop.is_set():
                notified = any(True for _ in conn.notifies(timeout=0.5, stop_after=1))
                if notified or time.monotonic() >= next_read:
                    self.catch_up()
                    next_read = time.monotonic() + self.catchup_s
                    self.save()
                    self._prune()

    def _prune(self) -> None:
        """Forget old log entries now and then (any process may; it is idempotent)."""
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.store.prune_log(self.keep_s)

"""The index writer lease: one process changes the index at a time.

Embedded mode with Redis (several processes sharing one data directory): a Redis lock held as
a short lease that its holder renews, so a holder that dies blocks the others for seconds, not
forever. Without Redis, or with PostgreSQL (where every process has its own index), the lease
is this process's lock, which the change-log follower takes too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from rag.errors import NotReady

log = logging.getLogger(__name__)

WRITER_LOCK = "rag:index-writer"
WAIT_S = 900  # how long a writer waits for another's lease before it gives up


class WriterLease:
    """`with lease.held():` changes the index alone, in this process and across processes."""

    def __init__(self, redis_url: str | None, lease_s: float) -> None:
        """Without `redis_url` (None or empty: no Redis) the lease is this process's lock."""
        self.redis_url = redis_url
        self.lease_s = lease_s
        self.local = threading.Lock()  # also taken by the change-log follower

    @property
    def shared(self) -> bool:
        """Whether other processes take the same lease (a Redis lock)."""
        return bool(self.redis_url)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lease for the duration of the block."""
        if not self.redis_url:
            with self.local:
                yield
            return
        import redis

        client = redis.Redis.from_url(self.redis_url)
        lock = client.lock(WRITER_LOCK, timeout=self.lease_s, blocking_timeout=WAIT_S,
                           thread_local=False)
        if not lock.acquire():
            raise NotReady("Another process has held the index writer for 15 minutes.",
                           "Check the workers' logs, then retry.")
        done = threading.Event()
        renewer = threading.Thread(target=renew, args=(lock, self.lease_s, done),
                                   name="rag-writer-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()


def renew(lock: Any, lease_s: float, done: threading.Event) -> None:
    """Renew the lease every third of it until `done` (the holder's thread owns it)."""
    while not done.wait(lease_s / 3):
        try:
            lock.reacquire()
        except Exception as exc:  # lost (expired while this process stalled) or Redis away
            log.error("the index writer lease could not be renewed: %s", exc)
            return

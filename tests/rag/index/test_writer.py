"""The index-writer lock across processes: a lease its holder renews, so a dead holder blocks
other writers for about one lease, not ten minutes."""

from __future__ import annotations

import time
from typing import Any

from rag.index.writer import WRITER_LOCK
from tests.conftest import REDIS_URL

LEASE_S = 1.0


def test_a_dead_holder_blocks_writers_for_one_lease(make_service: Any, redis_client: Any) -> None:
    service = make_service(redis_url=REDIS_URL, writer_lease_s=LEASE_S)
    # What a worker SIGKILLed inside the index step leaves behind: its token, with the lease TTL.
    redis_client.set(WRITER_LOCK, "token-of-a-killed-worker", px=int(LEASE_S * 1000))
    started = time.perf_counter()
    with service.index.writing():
        waited = time.perf_counter() - started
        assert redis_client.get(WRITER_LOCK) not in (None, b"token-of-a-killed-worker")
    assert waited < LEASE_S + 1.0, f"waited {waited:.2f} s for a dead holder's lease"
    assert redis_client.get(WRITER_LOCK) is None  # released on the way out


def test_a_live_holder_keeps_its_lease_past_the_lease_time(make_service: Any,
                                                            redis_client: Any) -> None:
    service = make_service(redis_url=REDIS_URL, writer_lease_s=LEASE_S)
    with service.index.writing():
        time.sleep(LEASE_S * 2.5)  # a long index step: the lease is renewed meanwhile
        other = redis_client.lock(WRITER_LOCK, timeout=LEASE_S)
        assert other.acquire(blocking=False) is False
        assert 0 < redis_client.pttl(WRITER_LOCK) <= LEASE_S * 1000
    assert redis_client.lock(WRITER_LOCK, timeout=LEASE_S).acquire(blocking=False) is True

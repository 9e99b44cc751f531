"""Rate limits per key (or client address without one), with Litestar's rate-limit middleware.

The counters live in Redis in distributed mode, so every API process shares them, and in memory
otherwise. If Redis goes away the limits fall back to this process's memory rather than failing
the request: asks keep being answered while `/ready` reports the outage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from litestar import Litestar
from litestar.connection import Request
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore

from api.auth import key_id, presented_key, spec_of
from rag.settings import Settings

log = logging.getLogger(__name__)

STORE = "rate_limit"
LIMITED_PREFIX = "/v1/"


class FallbackStore(Store):
    """`primary` (Redis) while it answers, `fallback` (memory) while it does not."""

    def __init__(self, primary: Store, fallback: Store, errors: tuple[type[Exception], ...]):
        self.primary, self.fallback, self._errors = primary, fallback, errors
        self._failing = False

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            result = await getattr(self.primary, method)(*args)
        except self._errors as exc:
            if not self._failing:
                log.warning("rate limits kept in memory: Redis is unreachable (%s)", exc)
            self._failing = True
            return await getattr(self.fallback, method)(*args)
        if self._failing:
            log.info("rate limits back in Redis")
        self._failing = False
        return result

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None
                  ) -> None:
        await self._call("set", key, value, expires_in)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        result: bytes | None = await self._call("get", key, renew_for)
        return result

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def delete_all(self) -> None:
        await self._call("delete_all")

    async def exists(self, key: str) -> bool:
        return bool(await self._call("exists", key))

    async def expires_in(self, key: str) -> int | None:
        result: int | None = await self._call("expires_in", key)
        return result

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.primary.__aexit__(*exc_info)


def rate_limit_store(settings: Settings) -> Store:
    """Redis (shared by every API process) in distributed mode, else this process's memory."""
    if not settings.redis_url:
        return MemoryStore()
    import redis
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    primary = RedisStore(client, namespace="rag:ratelimit", handle_client_shutdown=True)
    return FallbackStore(primary, MemoryStore(), (redis.RedisError, OSError))


@asynccontextmanager
async def close_rate_limit_store(app: Litestar) -> AsyncIterator[None]:
    """App lifespan: close the store's Redis connections at shutdown."""
    try:
        yield
    finally:
        await app.stores.get(STORE).__aexit__(None, None, None)


def rate_limit_middleware(settings: Settings) -> list[DefineMiddleware]:
    """Litestar's rate-limit middleware over /v1 routes, or nothing when the limit is 0."""
    if settings.rate_limit_per_minute <= 0:
        return []

    def client_id(request: Request[Any, Any, Any]) -> str:
        """A valid key's own bucket; anything else counts against the client address."""
        key = presented_key(request.headers)
        if key is not None and spec_of(request) is not None:
            return f"key:{key_id(key)}"
        return f"addr:{get_remote_address(request)}"

    def limited(request: Request[Any, Any, Any]) -> bool:
        # CORS preflights carry no key and must not use up the caller's budget.
        return request.url.path.startswith(LIMITED_PREFIX) and request.method != "OPTIONS"

    config = RateLimitConfig(
        rate_limit=("minute", settings.rate_limit_per_minute),
        identifier_for_request=client_id,
        check_throttle_handler=limited,
        store=STORE,
    )
    return [config.middleware]

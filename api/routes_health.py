"""Liveness and readiness."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio.to_thread
from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import IndexLogOut, ReadyOut
from rag.service import Health


@get("/health", tags=["ops"], media_type=MediaType.JSON)
async def health() -> dict[str, str]:
    """The process is alive (answers even while models load or an answer is generated)."""
    return {"status": "ok"}


def readiness(engine: Health, loading: str | None) -> ReadyOut:
    """Models loaded (`loading` says what is still loading), index readable, Redis reachable
    (distributed mode), and where the index stands in the change log (PostgreSQL)."""
    checks: dict[str, bool] = {"models": not loading}
    reasons = [loading] if loading else []
    checks["index"] = engine.index.readable
    if engine.index.problem and not loading:
        reasons.append(engine.index.problem)
    log, log_out = engine.index.follower, None
    if log is not None:
        checked = log.checked_at
        log_out = IndexLogOut(applied=log.applied, latest=log.latest, behind=log.behind,
                              error=log.error,
                              checked_s_ago=round(time.time() - checked, 3) if checked else None)
        # Asks go on from the index in memory while the database is away: say so, stay ready.
        if log.error:
            reasons.append(f"The database is unreachable ({log.error}): answers come "
                           "from this process's index as it was; uploads get 503.")
    if engine.redis is not None:
        checks["redis"] = engine.redis
        if not engine.redis:
            reasons.append("Redis is unreachable: answers are not cached and ingestion jobs "
                           "cannot be queued until it is back.")
    return ReadyOut(ready=all(checks.values()), reasons=reasons, checks=checks, index_log=log_out)


@get(
    "/ready",
    tags=["ops"],
    media_type=MediaType.JSON,
    responses={503: ResponseSpec(ReadyOut, description="Not ready; `reasons` says why.")},
)
async def ready(state: State, engine_health: Callable[[], Health]) -> Response[ReadyOut]:
    """Ready to answer: models loaded, index readable and, in distributed mode, Redis reachable.

    200 when ready; 503 with the reasons otherwise.
    """
    engine = await anyio.to_thread.run_sync(engine_health)
    result = readiness(engine, state.get("not_ready"))
    return Response(result, status_code=200 if result.ready else 503)

"""Liveness and readiness."""

from __future__ import annotations

import time

import anyio.to_thread
from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import IndexLogOut, ReadyOut
from rag.errors import IndexUnreadable
from rag.index.vectors import read_manifest
from rag.service import RagService


@get("/health", tags=["ops"], media_type=MediaType.JSON)
async def health() -> dict[str, str]:
    """The process is alive (answers even while models load or an answer is generated)."""
    return {"status": "ok"}


def _index_readable(service: RagService) -> tuple[bool, str | None]:
    index = service.index
    if index is None:
        return False, "The index is not loaded."
    try:
        if read_manifest(index.directory) is None and index.count > 0:
            return False, f"The index in {index.directory} has no manifest."
    except (OSError, ValueError, TypeError, IndexUnreadable) as exc:
        return False, f"The index in {index.directory} is unreadable: {exc}"
    return True, None


def readiness(service: RagService, loading: str | None) -> ReadyOut:
    """Models loaded, index readable, Redis reachable (distributed mode); blocking checks."""
    checks: dict[str, bool] = {"models": not loading}
    reasons = [loading] if loading else []
    checks["index"], problem = _index_readable(service)
    if problem and not loading:
        reasons.append(problem)
    log_out = None
    if service.follower is not None:
        follower = service.follower
        checked = follower.checked_at
        log_out = IndexLogOut(applied=follower.applied, latest=follower.latest,
                              behind=follower.behind(), error=follower.error,
                              checked_s_ago=round(time.time() - checked, 3) if checked else None)
        # Asks go on from the index in memory while the database is away: say so, stay ready.
        if follower.error:
            reasons.append(f"The database is unreachable ({follower.error}): answers come "
                           "from this process's index as it was; uploads get 503.")
    if service.settings.redis_url:
        ping = getattr(service.cache, "ping", None)
        checks["redis"] = bool(ping and ping())
        if not checks["redis"]:
            reasons.append("Redis is unreachable: answers are not cached and ingestion jobs "
                           "cannot be queued until it is back.")
    return ReadyOut(ready=all(checks.values()), reasons=reasons, checks=checks, index_log=log_out)


@get(
    "/ready",
    tags=["ops"],
    media_type=MediaType.JSON,
    responses={503: ResponseSpec(ReadyOut, description="Not ready; `reasons` says why.")},
)
async def ready(state: State) -> Response[ReadyOut]:
    """Ready to answer: models loaded, index readable and, in distributed mode, Redis reachable.

    200 when ready; 503 with the reasons otherwise.
    """
    result = await anyio.to_thread.run_sync(readiness, state["service"], state.get("not_ready"))
    return Response(result, status_code=200 if result.ready else 503)

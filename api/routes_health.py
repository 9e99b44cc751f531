"""Liveness and readiness."""

from __future__ import annotations

import time

import anyio.to_thread
from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import IndexLogOut, ReadyOut
from rag.service import RagService


@get("/health", tags=["ops"], media_type=MediaType.JSON)
async def health() -> dict[str, str]:
    """The process is alive (answers even while models load or an answer is generated)."""
    return {"status": "ok"}


def readiness(service: RagService, loading: str | None) -> ReadyOut:
    """The engine's readiness as the API reports it (blocking checks)."""
    found = service.readiness(loading)
    log = found.index_log
    log_out = None
    if log is not None:
        checked = log.checked_at
        log_out = IndexLogOut(applied=log.applied, latest=log.latest, behind=log.behind,
                              error=log.error,
                              checked_s_ago=round(time.time() - checked, 3) if checked else None)
    return ReadyOut(ready=found.ready, reasons=found.reasons, checks=found.checks,
                    index_log=log_out)


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

"""Liveness and readiness."""

from __future__ import annotations

from litestar import MediaType, Response, get
from litestar.datastructures import State


@get("/health", tags=["ops"], media_type=MediaType.JSON)
async def health() -> dict[str, str]:
    """The process is alive (answers even while models load or an answer is generated)."""
    return {"status": "ok"}


@get("/ready", tags=["ops"], media_type=MediaType.JSON)
async def ready(state: State) -> Response[dict[str, object]]:
    """Models loaded and index readable: 200; otherwise 503 with the reason."""
    reason = state.get("not_ready")
    if reason:
        return Response({"ready": False, "reason": reason}, status_code=503)
    return Response({"ready": True}, status_code=200)

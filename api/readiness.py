"""The guard on routes that need the loaded engine: 503 until it has loaded, saying why."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from rag.errors import NotReady


def engine_ready(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Let a request through once models and index have loaded (`/ready` says the same)."""
    loading = connection.app.state.get("not_ready")
    if loading:
        raise NotReady(f"The service is not ready: {loading}",
                       "Wait until GET /ready answers 200, then retry.")

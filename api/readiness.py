"""The gate of routes that need the loaded engine: 503 until models and index have loaded,
saying why (what `/ready` reports). The parts the routes take are provided through it, so a
route cannot forget it; the two routes that take no engine part carry the guard."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler

from rag.errors import NotReady


def check_ready(state: State) -> None:
    """NotReady (503) while the engine loads, with what it is doing."""
    loading = state.get("not_ready")
    if loading:
        raise NotReady(f"The service is not ready: {loading}",
                       "Wait until GET /ready answers 200, then retry.")


def when_ready(part: object) -> Provide:
    """Provide `part` to the routes that take it, once the engine has loaded."""

    def provide(state: State) -> Any:
        check_ready(state)
        return part

    return Provide(provide, sync_to_thread=False)


def engine_ready(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard for routes that need the engine but take none of its parts (upload, delete)."""
    check_ready(connection.app.state)



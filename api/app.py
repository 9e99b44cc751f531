"""`create_app(settings)`: the Litestar application and its start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from api.errors import EXCEPTION_HANDLERS
from api.routes_ask import ask
from api.routes_health import health, ready
from rag.errors import NotReady, RagError
from rag.service import AskRequest, RagService
from rag.settings import Settings

log = logging.getLogger(__name__)


def _start(service: RagService, state: State, sample_dir: Path | None) -> None:
    """Load models and index (in a thread, so /health answers meanwhile)."""
    try:
        service.load()
        if sample_dir is not None:
            _ingest_samples(service, sample_dir)
        state["not_ready"] = None
        log.info("ready: %d chunks searchable", service.store.searchable_count())
    except RagError as exc:
        state["not_ready"] = str(exc)
        log.error("not ready: %s", exc)


def _ingest_samples(service: RagService, sample_dir: Path) -> None:
    for path in sorted(sample_dir.iterdir()):
        if path.is_file():
            service.ingest_file(path, collection="sample")
    answer = service.ask(AskRequest("What is the default chunk size?"))
    log.info("sample question: What is the default chunk size? -> %s [%s]", answer.text,
             ", ".join(c.filename for c in answer.citations))


def create_app(
    settings: Settings, sample_dir: Path | None = None, service: RagService | None = None
) -> Litestar:
    """The API over one engine instance (tests pass a service sharing loaded models)."""
    service = service or RagService(settings)

    def provide_service(state: State) -> RagService:
        if state.get("not_ready"):
            raise NotReady(f"The service is not ready: {state['not_ready']}",
                           "Wait until GET /ready answers 200, then retry.")
        return service

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state["not_ready"] = "loading models and index"
        task = asyncio.create_task(asyncio.to_thread(_start, service, app.state, sample_dir))
        try:
            yield
        finally:
            task.cancel()

    return Litestar(
        route_handlers=[health, ready, ask],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        state=State({"settings": settings, "service": service}),
        openapi_config=OpenAPIConfig(title="RAG service", version="0.1.0", path="/schema"),
    )

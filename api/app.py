"""`create_app(settings)`: the Litestar application and its start-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Litestar, MediaType, Response, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.plugins.pydantic import PydanticInitPlugin

from api.auth import check_open_access
from api.errors import EXCEPTION_HANDLERS
from api.limits import STORE, close_rate_limit_store, rate_limit_middleware, rate_limit_store
from api.metrics import HTTP, metrics
from api.readiness import when_ready
from api.routes_ask import ask
from api.routes_chat import ROUTER as CHAT_ROUTER
from api.routes_conversations import ROUTES as CONVERSATION_ROUTES
from api.routes_documents import ROUTES as DOCUMENT_ROUTES
from api.routes_feedback import give_feedback
from api.routes_health import health, ready
from api.routes_view import ROUTES as VIEW_ROUTES
from api.routes_widget import demo_page, widget_js
from api.schemas import StrictModelSchemaPlugin
from api.view_links import RedactTokens, ViewLinks
from ingest.service import IngestService
from rag.ask.service import AskRequest
from rag.errors import RagError, StoreUnavailable
from rag.service import RagService
from rag.settings import Settings

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)
REDACT_TOKENS = RedactTokens()


def _start(service: RagService, state: State, sample_dir: Path | None) -> None:
    """Load models and index (in a thread, so /health answers meanwhile)."""
    try:
        if not service.loaded:  # tests hand in a service that is loaded already
            _load_when_the_store_answers(service, state)
        if sample_dir is not None:
            _ingest_samples(service, sample_dir)
        state["not_ready"] = None
        log.info("ready: %d chunks searchable", service.documents.searchable_count())
    except RagError as exc:
        state["not_ready"] = str(exc)
        log.error("not ready: %s", exc)


def _load_when_the_store_answers(service: RagService, state: State) -> None:
    """`service.load()`, again every few seconds while the database does not answer (unready
    meanwhile, saying why), so the API comes up by itself once PostgreSQL does."""
    while True:
        try:
            service.load()
            return
        except StoreUnavailable as exc:
            state["not_ready"] = str(exc)
            delay = exc.retry_after_s or 5
            log.error("not ready, retrying in %d s: %s", delay, exc)
            if state.get("stopping"):
                raise
            time.sleep(delay)


def _ingest_samples(service: RagService, sample_dir: Path) -> None:
    for path in sorted(sample_dir.iterdir()):
        if path.is_file():
            service.documents.ingest_file(path, collection="sample")
    answer = service.asking.ask(AskRequest("What is the default chunk size?"))
    quote = next((q for q in answer.evidence if q.supports is not None), None)
    if answer.mode == "quote" and answer.evidence:
        quote = answer.evidence[0]
    evidence = ""
    if quote is not None:
        evidence = f'; evidence: "{quote.text}" ({quote.filename}, {quote.start}-{quote.end})'
    short = f"{answer.short_answer.text}: " if answer.short_answer else ""
    log.info("sample question: What is the default chunk size? -> %s%s (%s)%s", short,
             answer.text, answer.mode, evidence)


async def _start_ingestion(loading: asyncio.Task[None], ingestion: IngestService,
                           state: State) -> None:
    """Start the job queue once the engine is loaded (embedded mode needs its models)."""
    await loading
    if state.get("not_ready") is None:
        await ingestion.start()


def _cors(settings: Settings) -> CORSConfig | None:
    """Browsers may call the API from `cors_origins` and from nowhere else."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept"],
        expose_headers=["Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                        "RateLimit-Reset", "RateLimit-Policy"],
        max_age=600,
    )


def server_config(app: Litestar, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How `rag serve` runs the app: bounded connections, short keep-alive."""
    import uvicorn

    values: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": "info",
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s, "timeout_graceful_shutdown": 10,
    }
    config = uvicorn.Config(app, **{**values, **overrides})  # configures uvicorn's logging
    logging.getLogger("uvicorn.access").addFilter(REDACT_TOKENS)  # view tokens stay out
    return config


def with_options(handlers: Sequence[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """`handlers` after an OPTIONS handler per path whose `Allow` lists every method there.

    Litestar makes a path's OPTIONS handler when the first handler of that path is registered
    and never updates its `Allow`, so `GET` then `DELETE` on one path answered `GET, OPTIONS`.
    Registered first, these take its place.
    """
    methods: dict[str, set[str]] = {}
    for handler in handlers:
        for path in handler.paths:
            methods.setdefault(path, {"OPTIONS"}).update(handler.http_methods)

    def options_for(path: str, allow: str) -> HTTPRouteHandler:
        def options() -> Response[None]:
            return Response(None, status_code=204, headers={"Allow": allow},
                            media_type=MediaType.TEXT)

        return route(path, http_method="OPTIONS", include_in_schema=False,
                     sync_to_thread=False, name=f"options:{path}")(options)

    return [*(options_for(path, ", ".join(sorted(m))) for path, m in methods.items()),
            *handlers]


def create_app(
    settings: Settings, sample_dir: Path | None = None, service: RagService | None = None
) -> Litestar:
    """The API over one engine instance (tests pass a service sharing loaded models)."""
    keys = check_open_access(settings)  # the key table (hashes only), or a ConfigError
    owned = service is None
    service = service or RagService(settings)
    ingestion = IngestService(service.settings, service.documents)  # the engine's limits
    links = ViewLinks(settings, keys)  # this app's keys sign and check the view URLs

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state["not_ready"] = "loading models and index"
        task = asyncio.create_task(asyncio.to_thread(_start, service, app.state, sample_dir))
        jobs = asyncio.create_task(_start_ingestion(task, ingestion, app.state))
        try:
            yield
        finally:
            app.state["stopping"] = True
            task.cancel()
            jobs.cancel()
            await ingestion.stop()
            if owned:  # stop following the index log, saving the index for the next start
                await asyncio.to_thread(service.close)

    return Litestar(
        route_handlers=[*with_options([health, ready, metrics, ask, *DOCUMENT_ROUTES,
                                       *VIEW_ROUTES, *CONVERSATION_ROUTES, give_feedback,
                                       widget_js, demo_page]), CHAT_ROUTER],
        # Each route takes the narrow part it uses, given only once the engine has loaded.
        dependencies={"asking": when_ready(service.asking),
                      "documents": when_ready(service.documents),
                      "conversations": when_ready(service.conversations),
                      "sources": when_ready(service.sources),
                      "view_links": Provide(lambda: links, sync_to_thread=False),
                      "ingestion": Provide(lambda: ingestion, sync_to_thread=False),
                      # /ready and /metrics answer while it loads
                      "engine_health": Provide(lambda: service.health, sync_to_thread=False),
                      "figures": Provide(lambda: service.figures, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan, close_rate_limit_store],
        middleware=[HTTP.middleware, *rate_limit_middleware(settings)],
        stores={STORE: rate_limit_store(settings)},
        # Bodies are validated strictly (`"stream": 0` is not a boolean, `"5"` not an integer),
        # as the schema says; the schema says which bodies forbid unknown fields.
        plugins=[PydanticInitPlugin(validate_strict=True), StrictModelSchemaPlugin()],
        cors_config=_cors(settings),
        state=State({"settings": settings, "keys": keys, "service": service,
                     "view_links": links}),
        openapi_config=OpenAPIConfig(title="RAG service", version="0.1.0", path="/schema",
                                     use_handler_docstrings=True),
    )

"""`rag worker`: the command line of the ingestion worker (distributed mode)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from rag.errors import RagError
from rag.settings import Settings

worker_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@worker_app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Jobs run at once (default RAG_WORKER_CONCURRENCY).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    check: Annotated[
        bool, typer.Option(help="Health check: exit 0 when a worker of this host is registered.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Consume ingestion jobs from Redis (needs RAG_REDIS_URL and the shared RAG_DATA_DIR)."""
    from ingest import worker as ingest_worker

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    try:
        if check:
            raise typer.Exit(0 if asyncio.run(ingest_worker.healthy(settings)) else 1)
        asyncio.run(ingest_worker.run(settings, concurrency or settings.worker_concurrency, burst))
    except RagError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

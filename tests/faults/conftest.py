"""Fixtures of the fault tests: one small loaded engine served by uvicorn as `rag serve` runs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app, server_config
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, free_port, ingest_corpus, wait_ready


@pytest.fixture(scope="module")
def fault_service(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
                  ) -> Iterator[RagService]:
    root: Path = tmp_path_factory.mktemp("faults-engine")
    settings = Settings(data_dir=root / "data", max_new_tokens=16, top_k=3)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, root / "corpus")
    yield service
    service.store.close()


class Served:
    """A live server in a thread, configured by `api.app.server_config` like `rag serve`."""

    def __init__(self, service: RagService, **overrides: Any) -> None:
        self.settings = app_settings(service, port=free_port(), **overrides)
        app = create_app(self.settings, service=service)
        self.server = uvicorn.Server(server_config(app, self.settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.settings.port}"
        self.port = self.settings.port

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=self.base) as client:
            wait_ready(client.get)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

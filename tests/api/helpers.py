"""Helpers of the API tests: apps over a loaded engine, a live server, SSE parsing, Redis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from rag.service import RagService
from rag.settings import Settings

ASK_KEY = "ask-key-5b0c1f2e9d"
INGEST_KEY = "ingest-key-77a1c3d0e4"
ADMIN_KEY = "admin-key-c9e8f1a2b3"
KEYS: dict[str, list[str]] = {ASK_KEY: ["ask"], INGEST_KEY: ["ingest"], ADMIN_KEY: ["admin"]}

CORPUS = {
    "bees.txt": "Honey bees in the Larkspur apiary produce 31 kilograms of honey per hive "
    "each summer. The beekeeper is called Miriam Oduya.",
    "rail.txt": "The Aldgate night train departs from platform 9 at 23:15 and reaches the "
    "coast at dawn.",
    "tides.md": "# Tides\n\nThe harbour of Port Vell has its highest tide at 7:40 in the "
    "morning.\n\nFishing boats leave an hour before high tide.",
}


def app_settings(service: RagService, **overrides: Any) -> Settings:
    """Settings of an app over `service` (access settings differ per test; no rate limit)."""
    values: dict[str, Any] = {"data_dir": service.settings.data_dir, "rate_limit_per_minute": 0}
    return Settings(**{**values, **overrides})


def ingest_corpus(service: RagService, folder: Path, corpus: dict[str, str] = CORPUS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in corpus.items():
        (folder / name).write_text(text)
        service.documents.ingest_file(folder / name)


def wait_ready(get: Any, timeout: float = 60.0) -> None:
    """Poll GET /ready until 200 (the lifespan finishes loading in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        response = get("/ready")
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout} s: {response.text}")
        time.sleep(0.05)


@contextmanager
def serving(service: RagService, **settings: Any) -> Iterator[TestClient[Litestar]]:
    """A TestClient of an app over `service`, once it is ready."""
    app = create_app(app_settings(service, **settings), service=service)
    with TestClient(app) as client:
        wait_ready(client.get)
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(app: Litestar, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    port = free_port()
    # log_config=None: uvicorn leaves logging alone, so its records reach pytest (caplog)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, log_config=None,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=base) as client:
            wait_ready(client.get)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def live_api(root: Path, embedder: Any, generator: Any, models_dir: Path,
             **settings: Any) -> Iterator[str]:
    """A live API (uvicorn, as `rag serve` runs it) over a fresh data dir under `root` holding
    CORPUS, sharing the session's models; yields its base URL."""
    values: dict[str, Any] = {"data_dir": root / "data", "converted_models_dir": models_dir,
                              "max_new_tokens": 8, "top_k": 2}
    config = Settings(**{**values, **settings})
    service = RagService(config, embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, root / "corpus")
    try:
        with live_server(create_app(config, service=service)) as base:
            yield base
    finally:
        service.store.close()


@dataclass
class Event:
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[Event]:
    """Events of a text/event-stream body (enough of the spec for these tests)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data or name != "message":
            events.append(Event(name, "\n".join(data)))
    return events


class PrivateRedis:
    """A redis-server of our own on a free port, to stop (and start again) mid-test."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.binary, self.port = binary, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    redis = PrivateRedis()
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()

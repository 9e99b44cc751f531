"""PostgreSQL lost while serving, through a real TCP proxy that the test cuts and restores:
asks over recently read sources go on answering from the in-memory index, uploads get 503 with
Retry-After, /ready stays ready and says so, and everything works again once it is back."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from rag.service import RagService
from tests.api.helpers import free_port, serving
from tests.conftest import PG_URL

pytestmark = pytest.mark.slow

FACT = "The ferry to Skellig Rock leaves the pier at 07:40 each weekday."


class Proxy:
    """Forwards a local port to the PostgreSQL server until `cut()`; `restore()` reopens it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cuts = 0
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        self._listener.close()
        with self._lock:
            self._cuts += 1  # a connection still being accepted now is dropped, not kept
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            cuts = self._cuts
            server = socket.create_connection(self.target)
            with self._lock:
                if cuts != self._cuts or listener.fileno() == -1:
                    for s in (client, server):
                        s.close()
                    continue
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):  # the other side was cut: stop piping
                while data := src.recv(65536):
                    dst.sendall(data)
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture()
def proxied(pg_url: str) -> Iterator[tuple[Proxy, str]]:
    server = make_url(PG_URL)
    proxy = Proxy((server.host or "127.0.0.1", server.port or 5432))
    yield proxy, make_url(pg_url).set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    proxy.cut()


def ask(client: Any, question: str) -> Any:
    return client.post("/v1/ask", json={"question": question, "top_k": 2})


def test_asks_go_on_and_uploads_wait_while_postgres_is_away(
    make_service: Any, proxied: tuple[Proxy, str], tmp_path: Path
) -> None:
    proxy, url = proxied
    service: RagService = make_service(database_url=url, max_new_tokens=16,
                                       index_catchup_s=0.5)
    (tmp_path / "ferry.txt").write_text(FACT)
    service.documents.ingest_file(tmp_path / "ferry.txt")
    with serving(service) as client:
        before = ask(client, "When does the ferry to Skellig Rock leave?")
        assert before.status_code == 200 and before.json()["citations"]

        proxy.cut()
        # Not the cached answer: another question over the same source.
        during = ask(client, "At what time does the Skellig Rock ferry depart the pier?")
        assert during.status_code == 200, during.text
        assert during.json()["citations"][0]["filename"] == "ferry.txt"
        upload = client.post("/v1/documents", files=[("file", ("b.txt", b"Buoys are red."))])
        assert upload.status_code == 503 and upload.headers["Retry-After"] == "5"
        assert f"127.0.0.1:{proxy.port}" in upload.json()["message"]
        assert "does not answer" in upload.json()["message"]
        deadline = time.monotonic() + 10
        while (ready := client.get("/ready").json())["index_log"]["error"] is None:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert ready["ready"] is True and "unreachable" in ready["reasons"][0]

        proxy.restore()
        deadline = time.monotonic() + 30
        while (upload := client.post("/v1/documents", files=[
                ("file", ("b.txt", b"The harbour buoys are painted red."))])).status_code == 503:
            assert time.monotonic() < deadline, upload.text
            time.sleep(0.5)
        assert upload.status_code == 202, upload.text
        job_id = upload.json()["documents"][0]["job_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ready = client.get("/ready").json()
        assert ready["index_log"]["error"] is None and ready["index_log"]["behind"] == 0
        assert ask(client, "What colour are the harbour buoys?").json()["citations"]


def test_serve_waits_for_postgres_at_start_and_comes_up_by_itself(
    proxied: tuple[Proxy, str], tmp_path: Path, embedder: Any, generator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from litestar.testing import TestClient

    from api.app import create_app
    from rag.settings import Settings

    proxy, url = proxied
    proxy.cut()  # down before the API starts
    settings = Settings(data_dir=tmp_path / "data", database_url=url, rate_limit_per_minute=0)
    service = RagService(settings, embedder=embedder, generator=generator)
    # the session's generator is loaded already; everything else loads for real
    monkeypatch.setattr(service, "load", lambda: RagService.load(service, generator=False))
    with TestClient(create_app(settings, service=service)) as client:
        deadline = time.monotonic() + 30
        while not (ready := client.get("/ready").json())["reasons"] or \
                "does not answer" not in ready["reasons"][0]:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert ready["ready"] is False and f"127.0.0.1:{proxy.port}" in ready["reasons"][0]
        assert "RAG_DATABASE_URL" in ready["reasons"][0]
        proxy.restore()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        assert client.get("/ready").json()["index_log"]["error"] is None
    service.close()

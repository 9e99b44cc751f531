"""Slow and abusive clients against a live server configured as `rag serve` runs it: bodies
over the limit, JSON nested 10,000 deep, a slowloris upload, 1,000 open connections. Each gets
a clear 4xx or a timeout, memory stays bounded, and other clients are answered meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.service import RagService
from tests.faults.conftest import Served

pytestmark = pytest.mark.slow

QUESTION = {"question": "Which platform does the Aldgate night train depart from?"}
IDLE_S = 2.0


@pytest.fixture(scope="module")
def served(fault_service: RagService) -> Iterator[Served]:
    original = fault_service.settings  # upload limits are the engine's settings
    fault_service.settings = original.model_copy(update={"upload_idle_timeout_s": IDLE_S})
    try:
        with Served(fault_service, keep_alive_s=2) as server:
            yield server
    finally:
        fault_service.settings = original


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def others_answered(base: str) -> float:
    """Seconds a well-behaved client waits for /health and an ask (both must succeed)."""
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/health").status_code == 200
        answer = client.post("/v1/ask", json=QUESTION)
        assert answer.status_code == 200, answer.text
        assert answer.json()["citations"][0]["filename"] == "rail.txt"
    return time.perf_counter() - started


def test_a_body_over_the_limit_is_413(served: Served) -> None:
    big = b'{"question": "' + b"a" * (11 << 20) + b'"}'
    with httpx.Client(base_url=served.base, timeout=60) as client:
        response = client.post("/v1/ask", content=big,
                               headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"] == "TooLarge" and response.json()["hint"]
    assert others_answered(served.base) < 30


@pytest.mark.parametrize("opening", ["[", '{"question": '])
def test_json_nested_10000_deep_is_400(served: Served, opening: str) -> None:
    depth = 10_000
    closing = "]" if opening == "[" else "}"
    body = opening * depth + "1" + closing * depth
    started = time.perf_counter()
    with httpx.Client(base_url=served.base, timeout=30) as client:
        response = client.post("/v1/ask", content=body,
                               headers={"content-type": "application/json"})
    took = time.perf_counter() - started
    assert response.status_code == 400, response.text[:300]
    assert response.json()["message"] and response.json()["hint"]
    assert took < 5, f"{took:.1f} s"
    assert others_answered(served.base) < 30


def test_a_slowloris_upload_is_cut_off_and_leaves_nothing(
    served: Served, fault_service: RagService
) -> None:
    boundary = "slow-boundary"
    head = (f"POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: 1000000\r\n\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="slow.txt"\r\n\r\n'
            "The first bytes of a file that never ends")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as slow:
        slow.sendall(head.encode())
        started = time.perf_counter()
        waited = others_answered(served.base)  # meanwhile others are answered
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            part = slow.recv(65536)
            if not part:
                break
            reply += part
        cut_after = time.perf_counter() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"The upload stalled" in reply and b"RAG_UPLOAD_IDLE_TIMEOUT_S" in reply
    assert IDLE_S <= cut_after < IDLE_S + 5 and waited < 30
    incoming = fault_service.settings.uploads_dir / ".incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []
    print(f"\nslowloris upload: 408 after {cut_after:.1f} s; others answered in {waited:.2f} s")


def test_1000_open_connections_leave_others_answered(served: Served) -> None:
    before, baseline = rss_mib(), others_answered(served.base)
    sockets = []
    try:
        for n in range(1000):
            conn = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            if n % 2:  # half send an endless request head, half nothing at all
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(conn)
        time.sleep(0.5)
        waited = others_answered(served.base)
        grew = rss_mib() - before
    finally:
        for conn in sockets:
            conn.close()
    after = others_answered(served.base)
    assert waited < max(10 * baseline, 5) and grew < 200, (waited, baseline, grew)
    print(f"\n1000 open connections: others answered in {waited:.2f} s (alone {baseline:.2f} "
          f"s, after {after:.2f} s); memory grew {grew} MiB")

"""Latency of asking over HTTP, for the closing note of the ask API.

    python -m tests.api.measure_ask [--rounds 5] [--browser]

Serves the app with uvicorn on 127.0.0.1 (packaged models, default generation settings, the
shipped sample corpus) and reports, as JSON: p50 of an uncached and of a cached JSON ask, and
time to the first streamed token (client side: request sent -> first `token` event). With
`--browser` it also times the browser test (pytest, wall clock, models loaded from scratch).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, live_server

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    "What is the default chunk size?",
    "How are API keys sent to the service?",
    "Which file types can be uploaded?",
    "How is the response cache keyed?",
    "What happens when a document is deleted?",
    "How does hybrid retrieval combine BM25 and dense search?",
    "What does the ready endpoint check?",
    "How are ingestion jobs retried?",
]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": ms(statistics.median(values)), "min_ms": ms(min(values)),
            "max_ms": ms(max(values)), "n": len(values)}


def time_json(client: httpx.Client, question: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post("/v1/ask", json={"question": question})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


def time_stream(client: httpx.Client, question: str) -> tuple[float, float]:
    """Seconds to the first `token` event and to the end of the stream."""
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", "/v1/ask", json={"question": question, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line == "event: token":
                first = time.perf_counter() - started
    assert first is not None
    return first, time.perf_counter() - started


def build_service(data_dir: Path) -> RagService:
    converted = ROOT / "data" / "models"
    if converted.is_dir():  # reuse a conversion `rag serve` already made
        (data_dir / "models").parent.mkdir(parents=True, exist_ok=True)
        (data_dir / "models").symlink_to(converted)
    service = RagService(Settings(data_dir=data_dir))
    service.load()
    for path in sorted((ROOT / "rag" / "samples").iterdir()):
        service.documents.ingest_file(path, collection="sample")
    return service


def measure_http(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        service = build_service(Path(tmp) / "data")
        questions = QUESTIONS[:rounds]
        app = create_app(app_settings(service), service=service)
        with live_server(app) as base, httpx.Client(base_url=base, timeout=600) as client:
            time_json(client, "warm up: what is this service?")
            service.cache.clear()
            uncached, tokens = [], []
            for q in questions:
                seconds, body = time_json(client, q)
                assert not body["cached"]
                uncached.append(seconds)
                tokens.append(body["usage"]["completion_tokens"])
            cached = []
            for q in questions * 3:
                seconds, body = time_json(client, q)
                assert body["cached"]
                cached.append(seconds)
            service.cache.clear()
            first_token, stream_total = [], []
            for q in questions:
                first, total = time_stream(client, q)
                first_token.append(first)
                stream_total.append(total)
        service.store.close()
    return {
        "uncached_ask": summary(uncached),
        "cached_ask": summary(cached),
        "stream_first_token": summary(first_token),
        "stream_total": summary(stream_total),
        "completion_tokens_mean": round(statistics.mean(tokens), 1),
        "max_new_tokens": Settings().max_new_tokens,
    }


def measure_browser_test() -> dict[str, Any]:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=3",
         "tests/api/test_widget_browser.py"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - started
    durations = [line.strip() for line in run.stdout.splitlines()
                 if line.strip().endswith("test_widget_streams_an_answer_with_citations_and_"
                                          "explains_errors")]
    return {"passed": run.returncode == 0, "wall_s": round(wall, 1), "pytest": durations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="Questions per measurement.")
    parser.add_argument("--browser", action="store_true", help="Also time the browser test.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, Any] = {"http": measure_http(args.rounds)}
    if args.browser:
        report["browser_test"] = measure_browser_test()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Latency of POST /v1/chat/completions beside POST /v1/ask on the same questions.

    python -m tests.api.measure_chat [--rounds 5]

Serves the app with uvicorn on 127.0.0.1 (packaged models, default generation settings, the
shipped sample corpus, response cache off so every answer is generated), asks each question on
both routes alternately, as JSON and streamed, and prints JSON: p50 of the whole request and of
the time to the first piece of answer text, per route, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, live_server
from tests.api.measure_ask import QUESTIONS, ROOT, summary


def build_service(data_dir: Path) -> RagService:
    service = RagService(Settings(data_dir=data_dir, cache_size=0,
                                  converted_models_dir=ROOT / "data" / "models"))
    service.load()
    for path in sorted((ROOT / "rag" / "samples").iterdir()):
        service.documents.ingest_file(path, collection="sample")
    return service


def ask_body(question: str, stream: bool, model: str) -> tuple[str, dict[str, Any]]:
    return "/v1/ask", {"question": question, "stream": stream}


def chat_body(question: str, stream: bool, model: str) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {"model": model, "stream": stream,
                                    "messages": [{"role": "user", "content": question}]}


def timed(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, float | None]:
    """Seconds to the whole response, and (streamed) to the first piece of answer text."""
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and (line == "event: token" or '"content": "' in line
                                  and '"content": ""' not in line):
                first = time.perf_counter() - started
    return time.perf_counter() - started, first


def measure(rounds: int) -> dict[str, Any]:
    routes = {"ask": ask_body, "chat": chat_body}
    seen: dict[str, list[float]] = {f"{r}_{k}": [] for r in routes
                                    for k in ("json", "stream_first", "stream_total")}
    with tempfile.TemporaryDirectory() as tmp:
        service = build_service(Path(tmp) / "data")
        model = service.generator.name
        app = create_app(app_settings(service), service=service)
        with live_server(app) as base, httpx.Client(base_url=base, timeout=600) as client:
            timed(client, *ask_body("warm up: what is this service?", False, model))
            for question in QUESTIONS[:rounds]:
                for name, body in routes.items():
                    seen[f"{name}_json"].append(timed(client, *body(question, False, model))[0])
                    total, first = timed(client, *body(question, True, model))
                    assert first is not None
                    seen[f"{name}_stream_first"].append(first)
                    seen[f"{name}_stream_total"].append(total)
        service.store.close()
    result: dict[str, Any] = {key: summary(values) for key, values in seen.items()}
    for kind in ("json", "stream_first", "stream_total"):
        result[f"{kind}_ratio_chat_to_ask"] = round(
            result[f"chat_{kind}"]["p50_ms"] / result[f"ask_{kind}"]["p50_ms"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="Questions per route.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure(args.rounds), indent=2))


if __name__ == "__main__":
    main()

"""Streamed answers against the final answers, on both streamed routes, for issue 19's note.

    python -m tests.api.measure_streams [--model NAME] [--limit N]

Serves the app with uvicorn on 127.0.0.1 (the shipped sample corpus, response cache off so
every answer is generated) and asks each question of the sample suite streamed on POST /v1/ask
(SSE) and on POST /v1/chat/completions (OpenAI chunks). Prints JSON per route: how many streams,
joined, are exactly the final answer (`done`'s `answer`, the last chunk's `rag.answer`), how
many answers repeat a sentence, how many carry a short answer, and the client-side p50/p95 of
the time to the first piece of text and to the end.
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
from eval import metrics as m
from eval.suites import load_suite
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, live_server, parse_sse

ROOT = Path(__file__).resolve().parents[2]


def sse_ask(client: httpx.Client, question: str) -> tuple[str, dict[str, Any], float, float]:
    """The joined `token` events, the `done` data, seconds to the first token and to the end."""
    started = time.perf_counter()
    first: float | None = None
    text = ""
    with client.stream("POST", "/v1/ask", json={"question": question, "stream": True}) as r:
        r.raise_for_status()
        for chunk in r.iter_text():
            if first is None and "event: token" in chunk:
                first = time.perf_counter() - started
            text += chunk
    total = time.perf_counter() - started
    events = parse_sse(text)
    done = events[-1].json()
    return "".join(e.data for e in events if e.event == "token"), done, first or total, total


def chat(client: httpx.Client, question: str, model: str
         ) -> tuple[str, dict[str, Any], float, float]:
    """The joined deltas, the last chunk's `rag`, seconds to the first text and to the end."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    first: float | None = None
    deltas: list[str] = []
    rag: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for choice in chunk.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    first = first or time.perf_counter() - started
                    deltas.append(content)
            rag = chunk.get("rag", rag)
    total = time.perf_counter() - started
    return "".join(deltas), rag, first or total, total


def percentiles(values: list[float]) -> dict[str, float]:
    summary = m.latency([v * 1000 for v in values])
    assert summary is not None
    return {"p50_ms": round(summary.p50, 1), "p95_ms": round(summary.p95, 1), "n": len(values)}


def measure(model: str | None, limit: int | None) -> dict[str, Any]:
    questions = [i.question for i in load_suite(ROOT / "eval" / "suites" / "sample").items]
    questions = questions[:limit] if limit else questions
    routes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Any] = {"generator_model": model} if model else {}
        service = RagService(Settings(data_dir=Path(tmp) / "data", cache_size=0,
                                      converted_models_dir=ROOT / "data" / "models", **extra))
        service.load()
        for path in sorted((ROOT / "rag" / "samples").iterdir()):
            service.documents.ingest_file(path, collection="sample")
        name = service.generator.name
        app = create_app(app_settings(service), service=service)
        with live_server(app) as base, httpx.Client(base_url=base, timeout=600) as client:
            for route in ("ask", "chat"):
                same = repeats = short = 0
                firsts: list[float] = []
                totals: list[float] = []
                for question in questions:
                    if route == "ask":
                        streamed, final, first, total = sse_ask(client, question)
                    else:
                        streamed, final, first, total = chat(client, question, name)
                    same += streamed == final["answer"]
                    repeats += m.repeats_sentence(final["answer"])
                    short += final.get("short_answer") is not None
                    firsts.append(first)
                    totals.append(total)
                routes[route] = {"streams": len(questions), "stream_equals_answer": same,
                                 "answers_repeating_a_sentence": repeats,
                                 "short_answers": short, "first_text": percentiles(firsts),
                                 "total": percentiles(totals)}
        service.close()
    return {"model": name, "questions": len(questions), **routes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="RAG_GENERATOR_MODEL (default: the setting's).")
    parser.add_argument("--limit", type=int, help="Only the first N questions.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure(args.model, args.limit), indent=2))


if __name__ == "__main__":
    main()

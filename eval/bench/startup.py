"""`rag bench` start-up: time to ready of a fresh `rag` process (first over an empty data dir,
where it converts the model, then again), each then ingesting a file and answering once, with
the peak memory of the API process and of its engine process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eval.bench.measure import SAMPLES, Report, engine_peak_rss_mb, peak_rss_mb
from rag.settings import Settings

READY = "rag-bench-ready"


def bench_startup(settings: Settings, tmp: Path, report: Report) -> dict[str, Any]:
    """Time to ready of a fresh process over an empty data dir (it converts the model), then
    again over the same dir; each then ingests a file and answers, and reports its peak RSS."""
    data = tmp / "startup"
    runs = {}
    for n, name in enumerate(("first", "second")):
        report("start-up", n, 2)
        runs[name] = _start_process(settings, data)
    return runs


def _start_process(settings: Settings, data: Path) -> dict[str, Any]:
    env = os.environ | {"RAG_DATA_DIR": str(data), "RAG_CONVERTED_MODELS_DIR": str(data / "models"),
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "from eval.bench.startup import serve_once; "
                              "serve_once()"], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    ready_s = None
    lines = []
    for line in child.stdout:
        if line.strip() == READY:
            ready_s = time.perf_counter() - start
        else:
            lines.append(line)
    if child.wait() != 0 or ready_s is None:
        raise RuntimeError(f"the start-up benchmark process failed (exit {child.returncode}).")
    reported: dict[str, Any] = json.loads(lines[-1])
    return {"ready_s": ready_s} | reported


def serve_once() -> None:
    """Child process body: load the engine, say so, then ingest a file and answer once."""
    from rag.ask.service import AskRequest
    from rag.service import RagService

    service = RagService(Settings())
    service.load()
    print(READY, flush=True)
    start = time.perf_counter()
    service.documents.ingest_file(SAMPLES / "ingestion.md")
    answer = service.asking.ask(AskRequest("What is the default chunk size?"))
    api_mb, engine_mb = peak_rss_mb(), engine_peak_rss_mb(service.generator)
    print(json.dumps({"ingest_and_ask_s": time.perf_counter() - start,
                      "answer_tokens": answer.usage.completion_tokens,
                      "api_peak_rss_mb": api_mb, "engine_peak_rss_mb": engine_mb,
                      "peak_rss_mb": api_mb + engine_mb}), flush=True)

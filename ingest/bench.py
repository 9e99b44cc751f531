"""Ingestion throughput with 1 and 2 `rag worker` processes, beside raw embedding of the same
chunks, measured in one run.

    python -m ingest.bench --docs 100 --workers 1 2 --concurrency 1 4 --out ingest-bench.json

For each worker count: a fresh data directory and queue, N workers started and loaded (not
timed), then `docs` generated documents of about two pages are accepted and queued as the API
does, and the clock runs until every job is done. Right after, the chunks those jobs stored are
embedded again with the same model in this process, in the batches the engine uses, which is
the floor any ingestion pipeline has to pay. Needs Redis (RAG_REDIS_URL; default: db 14 of a
local one, away from db 15, which the tests flush).

It lives beside the worker it drives (intake, job records, the SAQ queue, `rag worker`
processes) rather than in `eval/bench/`, since `eval` calls only `rag` or a running API; the
in-process ingest figures of `rag bench` are `eval.bench.ingest`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ingest.intake import Intake, StagedFile
from ingest.jobs import job_store
from ingest.queue import SaqQueue
from rag.documents.processing import EMBED_BATCH
from rag.embedding import build_embedder
from rag.service import RagService
from rag.settings import Settings
from rag.stores.uploads import sha256_file

WORDS = ["river", "valley", "lantern", "copper", "harvest", "signal", "market", "garden", "ferry",
         "orchard", "bridge", "station", "meadow", "quarry", "mill", "tower", "harbour", "beacon",
         "archive", "ledger", "granite", "willow"]


def two_pages(n: int) -> str:
    """About two printed pages (~1000 words) of text that differs per document."""
    paragraphs = []
    for p in range(10):
        words = [WORDS[(n * 7 + p * 3 + i * (i % 5 + 1)) % len(WORDS)] for i in range(95)]
        paragraphs.append(f"Report {n}, section {p}: " + " ".join(words) + ".")
    return "\n\n".join(paragraphs)


def start_workers(settings: Settings, count: int, concurrency: int, logs: Path) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(RAG_DATA_DIR=str(settings.data_dir), RAG_REDIS_URL=settings.redis_url or "",
               RAG_QUEUE_NAME=settings.queue_name, RAG_WORKER_CONCURRENCY=str(concurrency),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    procs = []
    for n in range(count):
        log = open(logs / f"worker{n}.log", "wb")  # noqa: SIM115 - lives as long as the worker
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "from rag.cli import app; app()", "worker"],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    for n, proc in enumerate(procs):
        while b"ready: queue" not in (logs / f"worker{n}.log").read_bytes():
            if proc.poll() is not None:
                raise SystemExit((logs / f"worker{n}.log").read_text())
            time.sleep(0.2)
    return procs


async def ingest(settings: Settings, service: RagService, folder: Path) -> tuple[float, list[str]]:
    """Accept and queue every file as the API does; seconds until all jobs are done."""
    jobs = job_store(settings)
    intake = Intake(service.settings, service.documents, jobs)
    queue = SaqQueue(settings, jobs)
    await queue.start()
    started = time.perf_counter()
    staged = []
    for path in sorted(folder.iterdir()):
        target = intake.staging_dir() / path.name
        shutil.copyfile(path, target)
        staged.append(StagedFile(target, path.name, target.stat().st_size, sha256_file(target)))
    accepted = await asyncio.to_thread(intake.accept, staged, "bench", {})
    for item in accepted:
        assert item.job is not None
        await queue.enqueue(item.job)
    ids = [item.job.id for item in accepted if item.job]
    while not all((j := jobs.get(i)) is not None and j.finished for i in ids):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    await queue.stop()
    failed = [i for i in ids if jobs.get(i).state != "done"]  # type: ignore[union-attr]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed, e.g. {jobs.get(failed[0])}")
    return elapsed, ids


def raw_embed_s(service: RagService, doc_ids: list[str]) -> dict[str, Any]:
    """Embed the stored chunks of these documents again, twice: per document in the engine's
    batches (what one job at a time pays), and all together in batches of 64."""
    texts = [[c.text for c in service.store.get_chunks(service.store.chunk_ids(d)).values()]
             for d in doc_ids]
    started = time.perf_counter()
    for doc_texts in texts:
        for start in range(0, len(doc_texts), EMBED_BATCH):
            service.embedder.embed(doc_texts[start : start + EMBED_BATCH])
    per_document = time.perf_counter() - started
    flat = [t for doc_texts in texts for t in doc_texts]
    started = time.perf_counter()
    for start in range(0, len(flat), EMBED_BATCH):
        service.embedder.embed(flat[start : start + EMBED_BATCH])
    return {"chunks": len(flat), "raw_embed_per_document_s": round(per_document, 2),
            "raw_embed_batched_s": round(time.perf_counter() - started, 2)}


def run(docs: int, workers: int, concurrency: int, redis_url: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    try:
        folder = root / "docs"
        folder.mkdir()
        for n in range(docs):
            (folder / f"report-{n:03d}.txt").write_text(two_pages(n))
        settings = Settings(data_dir=root / "data", redis_url=redis_url,
                            queue_name=f"rag-bench-{uuid.uuid4().hex[:8]}")
        service = RagService(settings, embedder=build_embedder(settings))
        service.load(generator=False)
        procs = start_workers(settings, workers, concurrency, root)
        try:
            elapsed, ids = asyncio.run(ingest(settings, service, folder))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(60)
        raw = raw_embed_s(service, _doc_ids(service, ids))
        stages = _stage_seconds(service, ids)
        calls = [line.split(" INFO ingest.worker ")[-1] for n in range(workers)
                 for line in (root / f"worker{n}.log").read_text().splitlines()
                 if "model calls" in line]
        service.close()
        return {"workers": workers, "concurrency": concurrency, "documents": docs,
                "ingest_s": round(elapsed, 2), "docs_per_s": round(docs / elapsed, 2),
                "chunks_per_s": round(raw["chunks"] / elapsed, 1), **raw,
                "ingest_over_raw": round(elapsed / raw["raw_embed_per_document_s"], 2),
                "job_stage_seconds_summed": stages, "worker_model_calls": calls}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stage_seconds(service: RagService, job_ids: list[str]) -> dict[str, float]:
    """Seconds per stage, summed over the jobs (they overlap when workers run in parallel)."""
    jobs = job_store(service.settings)
    total: dict[str, float] = {}
    for job_id in job_ids:
        for stage, seconds in jobs.get(job_id).timings.items():  # type: ignore[union-attr]
            total[stage] = round(total.get(stage, 0.0) + seconds, 2)
    return total


def _doc_ids(service: RagService, job_ids: list[str]) -> list[str]:
    jobs = job_store(service.settings)
    return [jobs.get(j).document_id for j in job_ids]  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1],
                        help="Jobs per worker at once (4: their embeddings share batches).")
    parser.add_argument("--redis-url", default=os.environ.get("RAG_REDIS_URL",
                                                               "redis://127.0.0.1:6379/14"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [run(args.docs, n, c, args.redis_url) for c in args.concurrency
               for n in args.workers]
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}, "runs": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

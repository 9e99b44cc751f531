"""`rag bench --database-url`: SQLite vs PostgreSQL on the same corpus in one run, what
following the log costs, and SAQ round trips on Redis and PostgreSQL.

- ingest: the same files into a fresh store of each kind (chunks/s), then the same questions
  asked of both, one after the other (ask total and retrieve + evidence, the stages that read
  the store);
- follow: a writer that keeps no index (as `rag worker`) ingests small files; the time from its
  commit to another service's index holding the change (NOTIFY, then the follower applies it);
- build: `rows` synthetic chunks inserted into PostgreSQL, then a fresh process's index built
  from the store at start, and a second start that resumes its saved index.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench.measure import Report
from eval.metrics import latency
from rag.settings import Settings
from rag.stores.postgres import scratch_database
from rag.types import ChunkDraft, Document

if TYPE_CHECKING:
    from rag.embedding import Embedder
    from rag.generation.base import Generator
    from rag.service import RagService


def _p(values: Sequence[float], q: int) -> float:
    """The p50 or p95 of `values` (eval.metrics' percentiles), rounded."""
    summary = latency(values)
    assert summary is not None and q in (50, 95)
    return round(summary.p50 if q == 50 else summary.p95, 2)


def bench_store(
    settings: Settings, server_url: str, corpus: Path, questions: Sequence[str],
    embedder: Embedder, generator: Generator, rows: int = 100_000, follows: int = 20,
    report: Report = lambda *_: None,
) -> dict[str, Any]:
    """Every figure above; `server_url` is a PostgreSQL server where it may make databases."""
    from rag.service import RagService

    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory(prefix="rag-bench-store-") as tmp, \
            scratch_database(server_url, "rag_bench") as url:
        def service(name: str, **more: Any) -> RagService:
            made = RagService(settings.model_copy(update={"data_dir": Path(tmp) / name,
                                                          **more}),
                              embedder=embedder, generator=generator)
            made.load(generator=False)  # the generator handed in is loaded already
            return made

        lite, pg = service("sqlite"), service("postgres", database_url=url)
        result = {"ingest": _ingest(lite, pg, files, report)}
        result["ask"] = _asks(lite, pg, questions, report)
        result["follow"] = _follow(pg, settings, Path(tmp), url, embedder, generator, follows,
                                   report)
        lite.close()
        pg.close()
    with tempfile.TemporaryDirectory(prefix="rag-bench-build-") as tmp, \
            scratch_database(server_url, "rag_bench") as url:
        result["build"] = _build(settings, Path(tmp), url, embedder, generator, rows, report)
    return result


def _ingest(lite: RagService, pg: RagService, files: Sequence[Path],
            report: Report) -> dict[str, Any]:
    """Each file into both stores, alternating which goes first (warm-up and noise shared)."""
    seconds = {"sqlite": 0.0, "postgres": 0.0}
    chunks = {"sqlite": 0, "postgres": 0}
    for n, path in enumerate(files):
        report("store ingest", n, len(files))
        pair = [("sqlite", lite), ("postgres", pg)]
        for name, service in pair if n % 2 == 0 else pair[::-1]:
            began = time.perf_counter()
            chunks[name] += service.documents.ingest_file(path).chunk_count
            seconds[name] += time.perf_counter() - began
    out: dict[str, Any] = {
        name: {"files": len(files), "chunks": chunks[name], "seconds": round(seconds[name], 3),
               "chunks_per_s": round(chunks[name] / seconds[name], 1)} for name in seconds}
    out["postgres_over_sqlite_throughput"] = round(
        out["postgres"]["chunks_per_s"] / out["sqlite"]["chunks_per_s"], 3)
    return out


def _asks(lite: RagService, pg: RagService, questions: Sequence[str],
          report: Report) -> dict[str, Any]:
    from rag.ask.service import AskRequest

    times: dict[str, dict[str, list[float]]] = {
        k: {"total_ms": [], "store_stages_ms": []} for k in ("sqlite", "postgres")}
    for n, question in enumerate(questions):
        report("store asks", n, len(questions))
        pair = [("sqlite", lite), ("postgres", pg)]
        for name, service in pair if n % 2 == 0 else pair[::-1]:
            t = service.asking.ask(AskRequest(question)).timings
            times[name]["total_ms"].append(t.total_ms)
            times[name]["store_stages_ms"].append(t.retrieve_ms + t.evidence_ms)
    out: dict[str, Any] = {k: {m: {"p50": _p(v, 50), "p95": _p(v, 95)} for m, v in d.items()}
                           for k, d in times.items()}
    out["count"] = len(questions)
    out["postgres_over_sqlite_p50"] = {
        m: round(out["postgres"][m]["p50"] / out["sqlite"][m]["p50"], 3)
        for m in ("total_ms", "store_stages_ms")}
    return out


def _follow(reader: RagService, settings: Settings, tmp: Path, url: str, embedder: Embedder,
            generator: Generator, count: int, report: Report) -> dict[str, Any]:
    """Commit on a writer -> applied in the reader's index (its follower thread)."""
    from rag.service import RagService

    writer = RagService(settings.model_copy(update={"data_dir": tmp / "writer",
                                                    "database_url": url}),
                        embedder=embedder, generator=generator)
    writer.load(generator=False, follow=False)
    assert reader.index.follower is not None
    waits = []
    for n in range(count):
        report("store follow", n, count)
        path = tmp / f"note-{n}.txt"
        path.write_text(f"Note {n}: the tide tables of harbour {n} are posted at the quay.")
        writer.documents.ingest_file(path)
        committed, target = time.perf_counter(), writer.store.log_position()  # type: ignore[attr-defined]
        while reader.index.follower.applied < target:
            time.sleep(0.001)
        waits.append((time.perf_counter() - committed) * 1000)
    writer.close()
    return {"count": count, "p50_ms": _p(waits, 50), "p95_ms": _p(waits, 95),
            "max_ms": round(max(waits), 2), "catchup_s": settings.index_catchup_s}


def _build(settings: Settings, tmp: Path, url: str, embedder: Embedder, generator: Generator,
           rows: int, report: Report) -> dict[str, Any]:
    from rag.service import RagService
    from rag.stores.chunks_postgres import PgChunkStore

    store = PgChunkStore(url)
    per_doc, dim = 1000, embedder.dimension
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for d in range(0, rows, per_doc):
        report("store build: inserting", d, rows)
        doc_id = f"synthetic-{d:07d}"
        store.put_document(Document(doc_id, f"{doc_id}.txt", "text/plain", 1,
                                    state="processing"))
        n = min(per_doc, rows - d)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        drafts = [ChunkDraft(i, f"synthetic chunk {d + i}", 0, 10, None, (), 4)
                  for i in range(n)]
        store.add_chunks(doc_id, drafts, vectors)
        store.mark_indexed(doc_id, None)
    insert_s = time.perf_counter() - started
    timings = {}
    for start in ("cold", "warm"):  # cold: empty data dir; warm: the index it saved
        report(f"store build: {start} start", 0, 1)
        service = RagService(settings.model_copy(update={"data_dir": tmp / "api",
                                                         "database_url": url}),
                             embedder=embedder, generator=generator)
        began = time.perf_counter()
        service.load(generator=False)
        timings[start] = round(time.perf_counter() - began, 3)
        assert service.index.index.count == rows
        kind = service.index.index.kind
        service.close()
    store.close()
    return {"chunks": rows, "insert_s": round(insert_s, 2),
            "insert_chunks_per_s": round(rows / insert_s, 1), "index_kind": kind,
            "cold_start_build_s": timings["cold"], "warm_start_resume_s": timings["warm"]}



def bench_queues(urls: dict[str, str], jobs: int = 200) -> dict[str, Any]:
    """SAQ on each backend ({name: url}, Redis or PostgreSQL) with an in-process worker and a
    job that does nothing: one job at a time (enqueue -> result) and `jobs` at once."""
    import asyncio

    return {name: asyncio.run(_queue_round_trips(url, jobs)) for name, url in urls.items()}


async def _queue_round_trips(url: str, jobs: int) -> dict[str, Any]:
    import asyncio
    import uuid

    from saq import Queue, Worker

    async def noop(ctx: Any, *, n: int) -> int:
        return n

    queue = Queue.from_url(url, name=f"rag-bench-{uuid.uuid4().hex[:8]}")
    worker = Worker(queue, functions=[("noop", noop)], concurrency=8, dequeue_timeout=1.0)
    await queue.connect()
    # A worker sweeps stuck jobs as it starts; a job it has just taken but not yet marked
    # active looks stuck then and is aborted ("swept"). Sweeping first holds the sweep off
    # (on Redis for its 60 s lock) while the round trips run.
    await queue.sweep()
    running = asyncio.create_task(worker.start())
    try:
        waits = []
        for n in range(jobs):
            began = time.perf_counter()
            await queue.apply("noop", n=n, timeout=30, poll_interval=0.05)
            waits.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await queue.map("noop", [{"n": n} for n in range(jobs)], timeout=60, poll_interval=0.05)
        at_once = time.perf_counter() - began
    finally:
        await worker.stop()
        running.cancel()
        await queue.disconnect()
    return {"jobs": jobs, "round_trip_p50_ms": _p(waits, 50), "round_trip_p95_ms": _p(waits, 95),
            "jobs_per_s_at_once": round(jobs / at_once, 1)}

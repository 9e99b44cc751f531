"""Distributed mode under faults, with a redis-server of the test's own and real `rag worker`
processes: Redis restarted under load, and a worker SIGKILLed at the parse and index stages."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis as redis_lib

from ingest.jobs import job_store
from rag.index.writer import WRITER_LOCK
from rag.service import RagService
from rag.settings import Settings
from rag.types import ChunkDraft, Document
from tests.api.helpers import ingest_corpus, private_redis
from tests.faults.conftest import Served
from tests.ingest.helpers import (
    Workers,
    check_exactly_once,
    long_text,
    unique_queue,
    wait_for,
)

pytestmark = pytest.mark.slow

LEASE_S = 2.0
HEARTBEAT_S = 2
QUESTIONS = ["Which platform does the Aldgate night train depart from?",
             "Who is the beekeeper of the Larkspur apiary?"]


def distributed(root: Path, url: str, models_dir: Path, embedder: Any, generator: Any
                ) -> RagService:
    settings = Settings(data_dir=root / "data", converted_models_dir=models_dir, redis_url=url,
                        queue_name=unique_queue(), max_new_tokens=16, top_k=3,
                        job_heartbeat_s=HEARTBEAT_S, writer_lease_s=LEASE_S, job_attempts=3,
                        rate_limit_per_minute=0)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    return service


class AskLoad:
    """Clients asking in a loop (the same questions, so mostly cached) until stopped."""

    def __init__(self, base: str, clients: int = 2) -> None:
        self.base = base
        self.results: list[tuple[float, float, int, bool]] = []  # (sent, answered, status,
        # cached)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as client:
            i = n
            while not self._stop.is_set():
                sent = time.monotonic()
                response = client.post("/v1/ask", json={"question": QUESTIONS[i % 2]})
                cached = response.status_code == 200 and response.json()["cached"]
                self.results.append((sent, time.monotonic(), response.status_code, cached))
                i += 1

    def stop(self) -> list[tuple[float, float, int, bool]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return self.results


def upload(client: httpx.Client, name: str, body: bytes) -> dict[str, Any]:
    response = client.post("/v1/documents", files=[("file", (name, body))])
    assert response.status_code == 202, response.text
    return response.json()["documents"][0]  # type: ignore[no-any-return]


def wait_jobs(client: httpx.Client, ids: list[str], pool: Workers, timeout_s: float = 300
              ) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        pool.check_alive()
        jobs = [client.get(f"/v1/jobs/{j}").json() for j in ids]
        return jobs if all(j["state"] in ("done", "failed", "cancelled") for j in jobs) else None

    return wait_for(finished, timeout_s, 0.2, "jobs to finish", pool.logs)  # type: ignore[no-any-return]


@contextmanager
def started(pool: Workers, count: int) -> Iterator[Workers]:
    try:
        for _ in range(count):
            pool.start()
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()


class Recorded(logging.Handler):
    """Messages of the named loggers; survives uvicorn's dictConfig, which closes every
    handler (and so caplog's) when the server starts."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.loggers = [logging.getLogger(n) for n in names]
        for logger in self.loggers:
            logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def detach(self) -> None:
        for logger in self.loggers:
            logger.removeHandler(self)


def test_redis_restarted_under_load(tmp_path: Path, embedder: Any, generator: Any,
                                    models_dir: Path) -> None:
    logged = Recorded("rag.stores.response_cache", "ingest.queue")
    with private_redis() as redis:
        service = distributed(tmp_path, redis.url, models_dir, embedder, generator)
        ingest_corpus(service, tmp_path / "corpus")
        pool = Workers(service.settings, tmp_path)
        with started(pool, 1), Served(service, redis_url=redis.url) as server, \
                httpx.Client(base_url=server.base, timeout=60) as client:
            load = AskLoad(server.base)
            long_doc = upload(client, "chronicle.txt", long_text(120).encode())
            small = [upload(client, f"note-{n}.txt", f"Note {n}: the sluice gate number {n} "
                            f"opens at {n + 5} o'clock.".encode()) for n in range(3)]
            wait_for(lambda: client.get(f"/v1/jobs/{long_doc['job_id']}").json()["state"]
                     == "running", 120, 0.05, "the long job to run", pool.logs)

            redis.stop()
            down = time.monotonic()
            asked = client.post("/v1/ask", json={"question": QUESTIONS[0]})  # sent in the outage
            assert asked.status_code == 200 and asked.json()["cached"] is False, asked.text
            during = upload(client, "outage.txt", b"Accepted while Redis was down: the weir "
                            b"keeper is called Ida Lanyon.")
            redis.start()  # a fresh, empty Redis: the queue and the cache are gone
            up = time.monotonic()

            ids = [d["job_id"] for d in [long_doc, *small, during]]
            jobs = wait_jobs(client, ids, pool)
            all_done = time.monotonic()
            results = load.stop()
            cached_again = next((t for s, t, _, cached in results if cached and s > up), None)

        assert [j["state"] for j in jobs] == ["done"] * len(jobs), jobs
        assert jobs[0]["attempts"] == 1  # the running job finished on its own
        assert results and all(status == 200 for _, _, status, _ in results), \
            [r for r in results if r[2] != 200][:5]
        outage = [r for r in results if r[0] <= up and r[1] >= down]  # overlapping it
        assert outage and not any(cached for _, t, _, cached in outage if t < up)
        assert cached_again is not None  # reconnected: answers are cached again
        logged.detach()
        assert any("response cache bypassed" in m for m in logged.messages), logged.messages
        assert any("is recorded but not queued" in m for m in logged.messages)
        check_exactly_once(service)
        print(f"\nredis restart: {len(results)} asks, {len(outage)} during the "
              f"{up - down:.1f} s outage, all 200; cache back {cached_again - up:.2f} s and all "
              f"5 jobs done {all_done - up:.1f} s after Redis returned (the running one finished "
              f"on its own, the 3 queued and 1 accepted during the outage resubmitted)")
        service.store.close()


def pad_index(service: RagService, count: int) -> None:
    """Add `count` searchable chunks with random vectors, so saving the index takes a while."""
    doc = "padding-" + "0" * 56
    service.store.put_document(Document(id=doc, filename="padding.txt", content_type="text/plain",
                                        size=1, collection="padding", state="processing"))
    rng = np.random.default_rng(0)
    for start in range(0, count, 5000):
        vectors = rng.standard_normal((5000, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        drafts = [ChunkDraft(start + i, f"padding {start + i}", 0, 1, None, (), 2)
                  for i in range(5000)]
        service.store.add_chunks(doc, drafts, vectors)
    service.store.mark_indexed(doc, None)
    service.documents.reindex()


def kill_at(service: RagService, pool: Workers, job_id: str, stage: str) -> tuple[int, float]:
    """SIGKILL the worker running the job as soon as its record shows `stage`."""
    jobs = job_store(service.settings)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            job = jobs.get(job_id)
            assert job is not None and job.state in ("queued", "running"), job
            if job.state == "running" and job.stage == stage and job.worker:
                pid = int(job.worker.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                return pid, time.monotonic()
            time.sleep(0.001)
    finally:
        jobs.close()
    raise AssertionError(f"the job never reached {stage}\n{pool.logs()}")


def test_workers_sigkilled_at_parse_and_in_the_index_writer_leave_documents_indexed_once(
    tmp_path: Path, embedder: Any, generator: Any, models_dir: Path
) -> None:
    """Three workers; one is killed at parse, another inside the index writer (its lease still
    held); the survivors take each job over. Recovery times are printed."""
    with private_redis() as redis:
        service = distributed(tmp_path, redis.url, models_dir, embedder, generator)
        pad_index(service, 30_000)  # a 46 MB index: its save is the window for the index kill
        pool = Workers(service.settings, tmp_path)
        with started(pool, 3), Served(service, redis_url=redis.url) as server, \
                httpx.Client(base_url=server.base, timeout=60) as client:
            lock = redis_lib.Redis.from_url(redis.url)
            for n, stage in enumerate(["parse", "index"]):
                html = "".join(f"<p>Annal {n}: {s}.</p>" for s in long_text(60).split(". "))
                doc = upload(client, f"annals-{n}.html",
                             f"<html><body>{html}</body></html>".encode())
                killed, killed_at = kill_at(service, pool, doc["job_id"], stage)
                held = lock.exists(WRITER_LOCK) == 1
                wait_for(lambda: lock.exists(WRITER_LOCK) == 0 or None, 30, 0.01,
                         "the dead holder's lease to expire")
                freed = time.monotonic()
                [job] = wait_jobs(client, [doc["job_id"]], pool)
                recovered = time.monotonic()
                assert job["state"] == "done" and job["attempts"] == 2, job
                assert not job["worker"].endswith(f"-{killed}")
                assert held == (stage == "index")  # killed inside the writer: lease outlived it
                assert freed - killed_at <= LEASE_S + 0.5
                stored = service.store.get_document(doc["document_id"])
                assert stored is not None and stored.state == "indexed" and stored.chunk_count
                check_exactly_once(service)
                print(f"\nSIGKILL at {stage}: writer lease {'held' if held else 'not held'}, "
                      f"free {freed - killed_at:.2f} s after the kill; another worker finished "
                      f"attempt 2 {recovered - killed_at:.1f} s after it, {stored.chunk_count} "
                      f"chunks, once")
            lock.close()
        service.store.close()

"""`rag worker`: a SAQ worker that runs ingestion jobs from Redis.

Any number of workers may run on any machines that share Redis and PostgreSQL
(`RAG_DATABASE_URL`: they write chunks and vectors there, and every API process follows),
or, without PostgreSQL, Redis and one data directory on one machine. Each
loads the embedding model once and runs up to `concurrency` jobs at a time; their embedding
calls are merged into shared batches (ingest.batching). A running job beats a heartbeat into
SAQ; when a worker dies (even by SIGKILL) its job stops beating, another worker's sweep takes
it back and retries it, and the engine starts the document over from a clean slate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from saq import Queue, Worker
from saq.types import Context

from ingest.batching import BatchingEmbedder
from ingest.jobs import JobStore, job_store
from ingest.queue import JOB_FUNCTION, QUEUE_ERRORS, queue_url, saq_job_options, saq_queue
from ingest.runner import JobRunner, Outcome, worker_name
from rag.embedding import build_embedder
from rag.errors import ConfigError
from rag.service import RagService
from rag.settings import Settings

log = logging.getLogger(__name__)

CLEANUP_WAIT_S = 30.0  # how long a cancelled job may take to reach its next stop point
LOST_AFTER_S = 60.0  # a running record silent this long with no SAQ job lost its worker


class RetryJob(Exception):
    """Tells SAQ to run the job again (the job record holds the error)."""


class WorkerContext(Context, total=False):
    service: RagService
    runner: JobRunner
    jobs: JobStore
    pool: ThreadPoolExecutor
    heartbeat_s: float
    reconciler: asyncio.Task[None]


async def ingest_document(ctx: WorkerContext, *, job_id: str) -> str:
    """Run one attempt of an ingestion job in a thread, beating SAQ's heartbeat meanwhile."""
    job = ctx["job"]
    started = time.monotonic()
    stop = threading.Event()
    work = asyncio.get_running_loop().run_in_executor(
        ctx["pool"], ctx["runner"].run, job_id, stop, job.attempts)
    beat = asyncio.create_task(_heartbeat(ctx, ctx["heartbeat_s"] / 3))
    try:
        outcome = await asyncio.shield(work)
    except asyncio.CancelledError:
        # Aborted (POST /v1/jobs/{id}/cancel), timed out or the worker is stopping: the thread
        # stops at its next batch and records why; wait a little so it can clean up.
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(work), CLEANUP_WAIT_S)
        if job.timeout and time.monotonic() - started >= job.timeout and not job.retryable:
            ctx["jobs"].timed_out(job_id, job.timeout, job.attempts)
        raise
    finally:
        beat.cancel()
    if outcome is Outcome.RETRY:
        record = ctx["jobs"].get(job_id)
        raise RetryJob(record.error if record else "retry")
    return outcome.value


async def reconcile(jobs: JobStore, queue: Queue, settings: Settings) -> int:
    """Settle records SAQ gave up on, and resubmit queued ones it never got; returns changes.

    SAQ finishes a job as aborted when the worker of its last attempt died (its sweep finds it
    silent), and nothing then runs our code for it: without this the record stayed `running`.
    """
    from saq.job import Status

    changed = 0
    records = jobs.unfinished()
    if not records:
        return 0
    for record, queued in zip(records, await queue.jobs(r.id for r in records), strict=True):
        age = time.time() - record.updated_at
        if queued is None and record.state == "queued" and age > settings.job_heartbeat_s:
            # accepted while Redis was away, lost in a Redis reset, or the API died before
            # queueing it; SAQ keys jobs by id, so resubmitting one it holds changes nothing
            await queue.enqueue(JOB_FUNCTION, **saq_job_options(settings, record.id))
            changed += 1
        elif queued is None and record.state == "running" and age > _lost_after(settings):
            # its queue entry was lost (Redis reset) and its worker is silent: retry it once
            # more if attempts are left
            if jobs.queue_entry_lost(record):
                await queue.enqueue(JOB_FUNCTION, **saq_job_options(settings, record.id))
            changed += 1
        elif queued is not None and queued.status in (Status.ABORTED, Status.FAILED):
            why = ("its worker stopped responding (killed, or stuck past the heartbeat)"
                   if queued.error == queue.swept_error_message else
                   (queued.error or "unknown error").strip().splitlines()[-1])
            jobs.given_up(record.id, queued.attempts, why)
            changed += 1
    return changed


def _lost_after(settings: Settings) -> float:
    """A running record silent this long, with no queue entry, has no live worker."""
    return max(LOST_AFTER_S, 3.0 * settings.job_heartbeat_s)


async def _reconcile_every(ctx: WorkerContext, settings: Settings, every_s: float) -> None:
    while True:
        try:
            await reconcile(ctx["jobs"], ctx["worker"].queue, settings)
        except Exception as exc:  # Redis or SQLite hiccup: try again next round
            log.warning("reconciling job records failed: %s", exc)
        await asyncio.sleep(every_s)


async def _heartbeat(ctx: WorkerContext, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await ctx["job"].update()
        except Exception as exc:  # a missed beat is survivable; the next one may get through
            log.warning("heartbeat failed: %s", exc)


def build_worker(settings: Settings, concurrency: int, burst: bool = False) -> Worker[Any]:
    """A SAQ worker over the configured queue, loading the engine at start-up."""
    if not queue_url(settings):
        raise ConfigError("`rag worker` needs a queue: Redis, or PostgreSQL.",
                          "Set RAG_REDIS_URL (e.g. redis://localhost:6379/0), or RAG_DATABASE_URL "
                          "with RAG_QUEUE=postgres; or run `rag serve` alone: without a queue it "
                          "ingests in-process.")

    sweep_s = max(1, min(60, settings.job_heartbeat_s))

    async def startup(ctx: WorkerContext) -> None:
        service = RagService(settings, embedder=BatchingEmbedder(build_embedder(settings)))
        # the embedder only: no generator, and no index (workers write to the store)
        await asyncio.to_thread(functools.partial(service.load, generator=False, follow=False))
        jobs = job_store(settings)
        jobs.open()
        ctx["service"] = service
        ctx["runner"] = JobRunner(service.documents, jobs)
        ctx["jobs"] = jobs
        ctx["heartbeat_s"] = settings.job_heartbeat_s
        ctx["pool"] = ThreadPoolExecutor(concurrency, thread_name_prefix="ingest")
        ctx["reconciler"] = asyncio.create_task(_reconcile_every(ctx, settings, sweep_s))
        log.info("worker %s ready: queue %s, %d at a time", worker_name(), settings.queue_name,
                 concurrency)

    async def shutdown(ctx: WorkerContext) -> None:
        if "reconciler" in ctx:
            ctx["reconciler"].cancel()
        if "pool" in ctx:
            ctx["pool"].shutdown(wait=True)
            embedder = ctx["service"].embedder
            if isinstance(embedder, BatchingEmbedder) and embedder.calls:
                log.info("embedded %d chunks in %d model calls (%.1f per call)", embedder.texts,
                         embedder.calls, embedder.texts / embedder.calls)
            ctx["service"].close()
            ctx["jobs"].close()

    return Worker(
        saq_queue(settings),
        functions=[(JOB_FUNCTION, ingest_document)],
        id=worker_name(),
        concurrency=concurrency,
        startup=startup,
        shutdown=shutdown,
        timers={"sweep": sweep_s, "abort": 1, "schedule": 1, "worker_info": 5},
        dequeue_timeout=1.0,
        burst=burst,
        metadata={"host": socket.gethostname(), "pid": os.getpid()},
    )


async def run(settings: Settings, concurrency: int, burst: bool = False) -> None:
    """Consume jobs until SIGINT/SIGTERM (or, with `burst`, until the queue is empty)."""
    worker = build_worker(settings, concurrency, burst)
    jobs = job_store(settings)  # fail here, clearly, when the database does not answer
    await asyncio.to_thread(jobs.open)
    jobs.close()
    await worker.queue.connect()
    try:
        await worker.start()
    finally:
        await worker.queue.disconnect()


async def healthy(settings: Settings) -> bool:
    """A worker of this host is registered on the queue (for container health checks)."""
    queue = saq_queue(settings)
    await queue.connect()
    try:
        workers = (await queue.info())["workers"]
    except QUEUE_ERRORS as exc:
        log.warning("health check: the queue is not reachable: %s", exc)
        return False
    finally:
        await queue.disconnect()
    host = socket.gethostname()
    return any((w.get("metadata") or {}).get("host") == host for w in workers.values())

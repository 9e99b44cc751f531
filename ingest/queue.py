"""Where accepted ingestion jobs go: in-process (embedded) or a SAQ queue (Redis, or
PostgreSQL with RAG_QUEUE=postgres).

Either way the job record in the JobStore is written first and is the truth that
`GET /v1/jobs/{id}` reads; the queue only decides who runs the job and when.

- `EmbeddedQueue` (no `RAG_REDIS_URL`): consumer threads in the API process run jobs with the
  already-loaded engine. Unfinished records are resumed at start, so a job acknowledged with 202
  survives a crash or restart of the process.
- `SaqQueue` (`RAG_REDIS_URL` set, or RAG_QUEUE=postgres): jobs go to SAQ; `rag worker`
  processes run them. At start the API resubmits records still `queued` (SAQ ignores keys it
  already holds), so a job accepted just before a crash is not lost either.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from redis.exceptions import RedisError

from ingest.jobs import Job, JobStore
from ingest.runner import JobRunner, Outcome
from rag.documents.indexer import DocumentIndexer
from rag.errors import ConfigError
from rag.settings import Settings
from rag.stores.postgres import conninfo

if TYPE_CHECKING:
    from saq import Queue

log = logging.getLogger(__name__)

JOB_FUNCTION = "ingest_document"  # the name `rag worker` registers (ingest.worker)
RETRY_DELAY_S = 1.0
QUEUE_ERRORS = (RedisError, psycopg.Error, OSError)  # the queue's server is away


class JobQueue(Protocol):
    """Runs accepted ingestion jobs; their records live in the JobStore."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def enqueue(self, job: Job) -> None:
        """Hand a job (already recorded as queued) to whoever runs jobs; idempotent."""

    async def cancel(self, job: Job) -> None:
        """Stop a job the JobStore already marks cancelled (drop it if it has not started)."""

    async def depth(self) -> int:
        """Jobs waiting to be taken: running jobs, cancelled ones and retries still waiting out
        their delay do not count."""


def queue_url(settings: Settings) -> str | None:
    """Where SAQ keeps the jobs (Redis or PostgreSQL); None: threads in `rag serve`."""
    match settings.queue:
        case "embedded":
            return None
        case "postgres":
            if not settings.database_url:
                raise ConfigError("RAG_QUEUE=postgres needs RAG_DATABASE_URL.",
                                  "Set it, or leave RAG_QUEUE at auto.")
            return conninfo(settings.database_url)
        case "redis":
            if not settings.redis_url:
                raise ConfigError("RAG_QUEUE=redis needs RAG_REDIS_URL.",
                                  "Set it (e.g. redis://localhost:6379/0).")
            return settings.redis_url
        case _:
            return settings.redis_url or None


def build_queue(settings: Settings, documents: DocumentIndexer, jobs: JobStore) -> JobQueue:
    """SAQ (on Redis or PostgreSQL) in distributed mode, threads in this process otherwise."""
    if queue_url(settings):
        return SaqQueue(settings, jobs)
    return EmbeddedQueue(documents, jobs, settings.worker_concurrency)


class EmbeddedQueue:
    """Consumer threads in this process; restart-safe through the JobStore."""

    def __init__(self, documents: DocumentIndexer, jobs: JobStore, concurrency: int = 1) -> None:
        self.runner = JobRunner(documents, jobs)
        self.jobs = jobs
        self.concurrency = concurrency
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._known: set[str] = set()  # queued or running here: never run one job twice at once
        self._waiting: set[str] = set()  # in `_pending`, not cancelled, not yet taken: the depth
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    async def start(self) -> None:
        """Resume unfinished jobs (oldest first), then start the consumers."""
        self._stop.clear()
        with self._lock:  # everything unfinished comes back from the records below
            self._pending, self._known, self._waiting = queue.Queue(), set(), set()
        resumed = self.jobs.resume_unfinished()
        for job in resumed:
            self._put(job.id)
        if resumed:
            log.info("resuming %d unfinished ingestion jobs", len(resumed))
        self._threads = [
            threading.Thread(target=self._consume, name=f"ingest-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Interrupt running jobs at their next batch (they are resumed at the next start)."""
        self._stop.set()
        for _ in self._threads:
            self._pending.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout_s)
        self._threads = []

    async def enqueue(self, job: Job) -> None:
        self._put(job.id)

    async def cancel(self, job: Job) -> None:
        """A waiting job is skipped when taken, a running one stops at its next report."""
        with self._lock:
            self._waiting.discard(job.id)

    async def depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _put(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._known:
                return
            self._known.add(job_id)
            self._waiting.add(job_id)
        self._pending.put(job_id)

    def _consume(self) -> None:
        while not self._stop.is_set():
            job_id = self._pending.get()
            if job_id is None:
                return
            with self._lock:
                self._waiting.discard(job_id)
            try:
                outcome = self.runner.run(job_id, self._stop)
            except Exception:  # the record keeps what happened; go on with the next job
                log.exception("ingestion job %s crashed", job_id)
                outcome = Outcome.FAILED
            with self._lock:
                self._known.discard(job_id)
            if outcome is Outcome.RETRY and not self._stop.wait(RETRY_DELAY_S):
                self._put(job_id)


class SaqQueue:
    """Jobs on a SAQ queue in Redis or PostgreSQL, run by `rag worker` processes."""

    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.queue: Queue = saq_queue(settings)

    async def start(self) -> None:
        """Connect, and resubmit jobs recorded as queued (accepted just before a crash)."""
        await self.queue.connect()
        queued = self.jobs.queued()
        for job in queued:
            await self.enqueue(job)
        if queued:
            log.info("resubmitted %d queued ingestion jobs to %s", len(queued), self.queue.name)

    async def stop(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, job: Job) -> None:
        """Queue it; while the queue's server is away the record alone keeps it (workers
        resubmit queued records they do not find in the queue)."""
        try:
            await self.queue.enqueue(JOB_FUNCTION, **saq_job_options(self.settings, job.id))
        except QUEUE_ERRORS as exc:
            log.warning("job %s is recorded but not queued (%s); it is queued when the queue "
                        "is back", job.id, exc)

    async def cancel(self, job: Job) -> None:
        from saq.job import ACTIVE_STATUSES

        queued = await self.queue.job(job.id)
        if queued is not None and queued.status in ACTIVE_STATUSES:
            await self.queue.abort(queued, "cancelled")

    async def depth(self) -> int:
        """SAQ's count of jobs queued and due (not yet taken by a worker)."""
        return await self.queue.count("queued")


def saq_queue(settings: Settings) -> Queue:
    from saq import Queue

    url = queue_url(settings)
    if not url:
        raise ConfigError("The ingestion queue needs Redis or PostgreSQL.",
                          "Set RAG_REDIS_URL (e.g. redis://localhost:6379/0), or "
                          "RAG_DATABASE_URL with RAG_QUEUE=postgres.")
    return Queue.from_url(url, name=settings.queue_name)


def saq_job_options(settings: Settings, job_id: str) -> dict[str, Any]:
    """SAQ's own key is the job id, so enqueueing one job twice queues it once."""
    return {
        "key": job_id,
        "job_id": job_id,
        "timeout": settings.job_timeout_s,
        "heartbeat": settings.job_heartbeat_s,
        "retries": settings.job_attempts,
        "retry_delay": RETRY_DELAY_S,
        "ttl": 7 * 24 * 3600,
    }

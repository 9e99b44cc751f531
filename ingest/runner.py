"""One attempt at one ingestion job: the same code in-process and in `rag worker`.

The engine's `DocumentIndexer.process` does the work and keeps the document atomic (its chunks
become searchable in one transaction, under the index writer). This module wraps it with the
job record: attempts, stage and progress, timings, cancellation and the decision to retry.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time

from ingest.jobs import Job, JobStore
from rag.documents.indexer import DocumentIndexer
from rag.errors import RagError

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"  # failed with an unexpected error; attempts are left
    INTERRUPTED = "interrupted"  # the worker is stopping; the job is queued again
    SKIPPED = "skipped"  # already finished or cancelled before it started


class Stopped(Exception):
    """Raised from the progress callback to stop the pipeline between two batches."""


class JobCancelled(Stopped):
    """The job was cancelled through the API (POST /v1/jobs/{id}/cancel or the document)."""


class JobInterrupted(Stopped):
    """The worker is shutting down; the job goes back to the queue."""


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"  # SAQ splits worker keys on ":"


class JobRunner:
    """Runs job attempts against one loaded engine."""

    def __init__(
        self, documents: DocumentIndexer, jobs: JobStore, report_every_s: float = 0.5
    ) -> None:
        self.documents = documents
        self.jobs = jobs
        self.report_every_s = report_every_s
        self.worker = worker_name()

    def run(self, job_id: str, stop: threading.Event, attempt: int | None = None) -> Outcome:
        """Run one attempt; `attempt` is the queue's count when it keeps one (SAQ does).

        A document an earlier attempt left part-processed is processed again from a clean
        slate (the engine drops its old chunks and vectors first); one it left indexed (its
        worker died between the swap and recording the job done, maybe before the index was
        saved) is kept as it is, the index rebuilt when its last save missed the swap.
        """
        job = self.jobs.begin_attempt(job_id, self.worker, attempt)
        if job is None:
            return Outcome.SKIPPED
        doc = self.documents.get(job.document_id)
        if doc is None:
            self.jobs.document_gone(job_id)
            return Outcome.CANCELLED
        log.info("job %s: %s (%s), attempt %d of %d", job_id, doc.filename, doc.id[:12],
                 job.attempts, job.max_attempts)
        progress = Progress(self.jobs, job_id, stop, self.report_every_s)
        try:
            result = self.documents.process(doc.id, progress, progress.timings)
        except JobCancelled:
            self.documents.mark_cancelled(doc.id)
            return Outcome.CANCELLED
        except JobInterrupted:
            self.documents.mark_queued(doc.id)
            self.jobs.interrupted(job_id)
            return Outcome.INTERRUPTED
        except RagError as exc:  # the file itself is at fault: retrying would fail the same way
            self.jobs.fail(job_id, str(exc), progress.timings)
            return Outcome.FAILED
        except Exception as exc:
            return self._unexpected(job, exc, progress.timings)
        self.jobs.complete(job_id, progress.timings, result.chunk_count)
        return Outcome.DONE

    def _unexpected(self, job: Job, exc: Exception, timings: dict[str, float]) -> Outcome:
        """An unexpected error: the job runs again while attempts are left."""
        error = f"{type(exc).__name__}: {exc}"
        log.exception("job %s attempt %d failed", job.id, job.attempts)
        if self.jobs.attempt_failed(job, error, timings):
            self.documents.mark_queued(job.document_id, error)
            return Outcome.RETRY
        return Outcome.FAILED


class Progress:
    """The engine's progress callback: records progress and stops the job when asked.

    Writes are throttled to one per `every_s`; the start of the index stage always checks,
    since it is the last point where the job can stop without indexing the document.
    """

    def __init__(
        self, jobs: JobStore, job_id: str, stop: threading.Event, every_s: float
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.stop = stop
        self.every_s = every_s
        self.timings: dict[str, float] = {}
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        forced = stage == "index" and done == 0
        if not forced and not self.stop.is_set() and now - self._last < self.every_s:
            return
        self._last = now
        state = self.jobs.report(self.job_id, stage, done, total, self.timings)
        if state == "cancelled" or state is None:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.stop.is_set():
            raise JobInterrupted(f"job {self.job_id} was interrupted")

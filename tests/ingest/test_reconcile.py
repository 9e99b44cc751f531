"""Job records SAQ gave up on are settled, and lost ones resubmitted (real Redis, no worker)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from saq.job import Status

from ingest.intake import Intake
from ingest.jobs import Job, JobStore, job_store
from ingest.queue import JOB_FUNCTION, saq_job_options, saq_queue
from ingest.worker import reconcile
from rag.service import RagService
from tests.ingest.helpers import REDIS_URL, stage, unique_queue

pytestmark = pytest.mark.slow


def accept(service: RagService, jobs: JobStore, folder: Path, name: str) -> Job:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"The {name} file says the mill wheel turns {len(name)} times.")
    intake = Intake(service.settings, service.documents, jobs)
    [accepted] = intake.accept([stage(intake, folder / name)], "default", {})
    assert accepted.job is not None
    return accepted.job


async def test_reconcile_settles_what_saq_gave_up_on_and_resubmits_lost_jobs(
    make_service, redis_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    service: RagService = make_service(redis_url=REDIS_URL, queue_name=unique_queue())
    settings = service.settings
    jobs = job_store(settings)
    dead, lost, fresh = (accept(service, jobs, tmp_path, n) for n in ("a.txt", "b.txt", "c.txt"))
    queue = saq_queue(settings)
    await queue.connect()
    try:
        # dead: the worker of its last attempt was killed; SAQ's sweep finished it as aborted.
        await queue.enqueue(JOB_FUNCTION, **saq_job_options(settings, dead.id))
        jobs.begin_attempt(dead.id, "host:1", attempt=3)
        swept = await queue.job(dead.id)
        assert swept is not None
        swept.attempts = 3
        await queue.finish(swept, Status.ABORTED, error=queue.swept_error_message)
        # lost: recorded an hour ago, never queued (the API died, or Redis was reset).
        jobs._update("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time() - 3600, lost.id))
        # fresh: just recorded; the API is about to queue it, so it is left alone.

        assert await reconcile(jobs, queue, settings) == 2
        failed = jobs.get(dead.id)
        assert failed is not None and failed.state == "failed"
        assert failed.error == ("Gave up after 3 attempts: its worker stopped responding "
                                "(killed, or stuck past the heartbeat).")
        resubmitted = await queue.job(lost.id)
        assert resubmitted is not None and resubmitted.status == Status.QUEUED
        assert await queue.job(fresh.id) is None
        assert jobs.get(fresh.id).state == "queued"  # type: ignore[union-attr]
        assert await reconcile(jobs, queue, settings) == 0  # settled once
    finally:
        await queue.disconnect()


async def test_a_running_job_whose_queue_entry_was_lost_is_retried_once_then_failed(
    make_service, redis_client, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """What a Redis reset leaves when the job's worker also died: a silent running record."""
    service: RagService = make_service(redis_url=REDIS_URL, queue_name=unique_queue(),
                                       job_attempts=2)
    settings = service.settings
    jobs = job_store(settings)
    job = accept(service, jobs, tmp_path, "orphan.txt")
    queue = saq_queue(settings)
    await queue.connect()
    try:
        for attempt, expected in ((1, "queued"), (2, "failed")):
            jobs.begin_attempt(job.id, "host:1", attempt=attempt)
            jobs._update("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time() - 3600,
                                                                        job.id))
            redis_client.flushdb()  # Redis reset: the retry's queue entry is lost too
            assert await reconcile(jobs, queue, settings) == 1
            record = jobs.get(job.id)
            assert record is not None and record.state == expected, record
        assert "queue entry was lost" in (record.error or "")
        assert await reconcile(jobs, queue, settings) == 0
    finally:
        await queue.disconnect()

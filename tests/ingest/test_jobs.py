"""Job records: transitions, atomic submit across connections, cancellation that sticks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.jobs import JobStore, SqliteJobStore
from ingest.jobs_postgres import PgJobStore

Make = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    """Opens job stores (each its own connection) on one database of either backend."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def make() -> JobStore:
        jobs = PgJobStore(url) if url else SqliteJobStore(tmp_path / "jobs.sqlite3")
        jobs.open()
        return jobs

    return make


def submit(jobs: JobStore, doc: str = "d1", size: int = 7000) -> str:
    job, created = jobs.submit(doc, "a.txt", "text/plain", size, max_attempts=3)
    assert job.state == "queued"
    return job.id


def test_one_active_job_per_document(make_jobs: Make) -> None:
    jobs = make_jobs()
    first, created = jobs.submit("d1", "a.txt", "text/plain", 10, 3)
    again, created_again = jobs.submit("d1", "a.txt", "text/plain", 10, 3)
    assert created and not created_again and again.id == first.id
    jobs.begin_attempt(first.id, "w")
    jobs.finish(first.id, "failed", "boom")
    retry, created_retry = jobs.submit("d1", "a.txt", "text/plain", 10, 3)
    assert created_retry and retry.id != first.id
    assert jobs.latest_for("d1") == retry


def test_concurrent_submits_from_separate_connections_create_one_job(make_jobs: Make) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def submit_once() -> None:
        jobs = make_jobs()  # its own connection, as another process has
        barrier.wait()
        results.append(jobs.submit("same", "a.txt", "text/plain", 10, 3)[1])
        jobs.close()

    threads = [threading.Thread(target=submit_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(make_jobs().active_for("same")) == 1


def test_attempts_progress_and_done(make_jobs: Make) -> None:
    jobs = make_jobs()
    job_id = submit(jobs)
    running = jobs.begin_attempt(job_id, "host:1")
    assert running is not None and running.state == "running" and running.attempts == 1
    assert running.estimate == 10  # 7000 bytes of text at ~700 bytes per chunk
    assert jobs.report(job_id, "embed", 4, None, {"parse": 0.5}) == "running"
    job = jobs.get(job_id)
    assert job is not None and (job.stage, job.done, job.timings) == ("embed", 4, {"parse": 0.5})
    assert job.eta_s() is not None and job.eta_s() >= 0  # type: ignore[operator]
    assert jobs.finish(job_id, "done", None, {"parse": 0.5, "embed": 1.0}, total=9)
    done = jobs.get(job_id)
    assert done is not None and done.state == "done" and done.done == done.total == 9
    assert done.finished_at and done.eta_s() is None
    assert jobs.begin_attempt(job_id, "host:2") is None  # finished jobs never run again
    assert not jobs.finish(job_id, "failed", "late")


def test_attempt_number_from_the_queue_wins(make_jobs: Make) -> None:
    jobs = make_jobs()
    job_id = submit(jobs)
    job = jobs.begin_attempt(job_id, "w", attempt=2)  # SAQ counts a swept attempt too
    assert job is not None and job.attempts == 2


def test_cancellation_is_never_overwritten(make_jobs: Make) -> None:
    jobs = make_jobs()
    job_id = submit(jobs)
    jobs.begin_attempt(job_id, "w")
    cancelled = jobs.cancel(job_id)
    assert cancelled is not None and cancelled.state == "cancelled"
    assert jobs.report(job_id, "embed", 64, None, {}) == "cancelled"
    assert not jobs.requeue(job_id, "x")
    assert not jobs.finish(job_id, "done")
    assert jobs.get(job_id).state == "cancelled"  # type: ignore[union-attr]
    assert jobs.finish(job_id, "done", "Indexed before the cancellation took effect.", force=True)
    assert jobs.get(job_id).state == "done"  # type: ignore[union-attr]


def test_requeue_keeps_the_error_and_unfinished_lists_it(make_jobs: Make) -> None:
    jobs = make_jobs()
    first, second = submit(jobs, "d1"), submit(jobs, "d2")
    time.sleep(0.01)
    jobs.begin_attempt(first, "w")
    assert jobs.requeue(first, "Attempt 1 of 3 failed: OSError")
    job = jobs.get(first)
    assert job is not None and job.state == "queued" and job.error and job.attempts == 1
    assert [j.id for j in jobs.unfinished()] == [first, second]
    assert [j.id for j in jobs.queued()] == [first, second]


def test_estimates_learn_from_finished_jobs(make_jobs: Make) -> None:
    jobs = make_jobs()
    job_id = submit(jobs, "d1", size=10_000)
    jobs.begin_attempt(job_id, "w")
    jobs.finish(job_id, "done", total=50)
    assert jobs.chunks_per_byte("text/plain") == 50 / 10_000
    assert jobs.chunks_per_byte("application/pdf") < jobs.chunks_per_byte("text/markdown")


def test_staging_left_by_a_crashed_upload_is_swept(make_jobs: Make, tmp_path: Path) -> None:
    import os

    from ingest.intake import Intake
    from rag.service import RagService
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path)
    intake = Intake(settings, RagService(settings).documents, make_jobs())
    old, new = intake.staging_dir(), intake.staging_dir()
    (old / "half.pdf").write_bytes(b"%PDF-1.4 half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert intake.sweep_staging() == 1
    assert not old.exists() and new.exists()  # a young one may be an upload in progress

"""The JobQueue contract, passed by both implementations: the in-process queue and SAQ on Redis
with a real `rag worker` process (and, for the queue depth, SAQ on PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.intake import Intake
from ingest.jobs import Job, JobStore, job_store
from ingest.queue import EmbeddedQueue, JobQueue, SaqQueue, build_queue
from rag.service import RagService
from tests.ingest.helpers import REDIS_URL, Workers, stage, unique_queue

pytestmark = pytest.mark.slow


@pytest.fixture(params=["embedded", "saq"])
def service(request: pytest.FixtureRequest, make_service, redis_client) -> RagService:  # type: ignore[no-untyped-def]
    if request.param == "saq":
        return make_service(redis_url=REDIS_URL, queue_name=unique_queue())  # type: ignore[no-any-return]
    return make_service()  # type: ignore[no-any-return]


@pytest.fixture()
def worker_pool(service: RagService, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(service.settings, tmp_path)
    yield pool
    pool.stop()


def accept(service: RagService, jobs: JobStore, folder: Path, name: str, text: str) -> Job:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    intake = Intake(service.settings, service.documents, jobs)
    [accepted] = intake.accept([stage(intake, folder / name)], "default", {})
    assert accepted.job is not None and accepted.new_job
    return accepted.job


async def settled(jobs: JobStore, job_ids: list[str], pool: Workers) -> dict[str, Job]:
    for _ in range(1200):
        found = {j: jobs.get(j) for j in job_ids}
        if all(job and job.finished for job in found.values()):
            return found  # type: ignore[return-value]
        pool.check_alive()
        await asyncio.sleep(0.1)
    raise AssertionError(f"jobs did not finish: {found}\n{pool.logs()}")


async def test_job_queue_contract(service: RagService, worker_pool: Workers,
                                  tmp_path: Path) -> None:
    jobs = job_store(service.settings)
    queue: JobQueue = build_queue(service.settings, service.documents, jobs)
    assert isinstance(queue, SaqQueue if service.settings.redis_url else EmbeddedQueue)
    files = tmp_path / "files"
    run = accept(service, jobs, files, "a.txt", "The lock keeper opens the canal gates at 6:15.")
    dropped = accept(service, jobs, files, "b.txt", "The bakery sells rye loaves on Fridays.")
    # Recorded (so acknowledged) but never handed to the queue: the process died right there.
    orphan = accept(service, jobs, files, "c.txt", "The glacier retreats 30 metres a year.")

    await queue.enqueue(run)
    await queue.enqueue(run)  # enqueueing twice runs it once
    await queue.enqueue(dropped)
    assert await queue.depth() == 2
    cancelled = jobs.cancel(dropped.id)
    assert cancelled is not None
    await queue.cancel(cancelled)
    assert await queue.depth() == 1  # a cancelled job no longer waits

    await queue.start()  # a fresh start picks up the orphan
    if service.settings.redis_url:
        worker_pool.start()
    try:
        final = await settled(jobs, [run.id, dropped.id, orphan.id], worker_pool)
        assert final[run.id].state == final[orphan.id].state == "done", final
        assert final[run.id].attempts == final[orphan.id].attempts == 1
        assert final[dropped.id].state == "cancelled" and final[dropped.id].attempts == 0
        assert service.store.chunk_ids(dropped.document_id) == []
        assert service.store.get_document(run.document_id).state == "indexed"  # type: ignore[union-attr]
        assert await queue.depth() == 0

        await queue.enqueue(final[run.id])  # a finished job handed over again stays finished
        await asyncio.sleep(1.5)
        again = jobs.get(run.id)
        assert again is not None and again.state == "done" and again.attempts == 1
    finally:
        await queue.stop()


async def take_one(queue: JobQueue, jobs: JobStore, first: Job) -> str:
    """What a consumer does: take the next job (the embedded consumer took `first` already)."""
    if isinstance(queue, SaqQueue):
        taken = await queue.queue.dequeue(timeout=5)
        assert taken is not None
        return taken.key
    for _ in range(300):
        job = jobs.get(first.id)
        if job is not None and job.state == "running":
            return first.id
        await asyncio.sleep(0.05)
    raise AssertionError(f"the consumer did not take {first.id}")


async def test_depth_counts_the_jobs_waiting_not_the_running_ones(
    queued_service: RagService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = queued_service
    jobs = job_store(service.settings)
    queue: JobQueue = build_queue(service.settings, service.documents, jobs)
    held = threading.Event()  # the embedded consumer holds the job it takes
    process = service.documents.process

    def held_process(*args: Any, **kwargs: Any) -> Any:
        held.wait(60)
        return process(*args, **kwargs)

    monkeypatch.setattr(service.documents, "process", held_process)
    await queue.start()
    try:
        assert await queue.depth() == 0
        accepted = [accept(service, jobs, tmp_path / "files", f"{n}.txt",
                           f"Lock {n} of the canal opens at {n + 5}:15.") for n in range(4)]
        for job in accepted:
            await queue.enqueue(job)
        await queue.enqueue(accepted[1])  # queued once
        taken = await take_one(queue, jobs, accepted[0])
        assert await queue.depth() == 3  # the running job does not count
        last = next(job for job in reversed(accepted) if job.id != taken)
        cancelled = jobs.cancel(last.id)
        assert cancelled is not None
        await queue.cancel(cancelled)
        assert await queue.depth() == 2
        if isinstance(queue, SaqQueue):  # workers take the other two
            assert await queue.queue.dequeue(timeout=5) is not None
            assert await queue.depth() == 1
            assert await queue.queue.dequeue(timeout=5) is not None
        else:  # the consumer goes on and drains the queue
            held.set()
            await settled(jobs, [job.id for job in accepted], Workers(service.settings, tmp_path))
        assert await queue.depth() == 0
    finally:
        held.set()
        await queue.stop()

"""The JobQueue contract, passed by both implementations: the in-process queue and SAQ on Redis
with a real `rag worker` process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

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
    cancelled = jobs.cancel(dropped.id)
    assert cancelled is not None
    await queue.cancel(cancelled)

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

        await queue.enqueue(final[run.id])  # a finished job handed over again stays finished
        await asyncio.sleep(1.5)
        again = jobs.get(run.id)
        assert again is not None and again.state == "done" and again.attempts == 1
    finally:
        await queue.stop()

"""Wiring of ingestion for the API: job records, intake and the job queue, one object."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ingest.intake import Accepted, Intake, StagedFile
from ingest.jobs import Job, JobStore, job_store
from ingest.queue import JobQueue, build_queue
from rag.documents.indexer import DocumentIndexer
from rag.errors import NotFound, RagError
from rag.settings import Settings


class JobFinished(RagError):
    """The job already finished; there is nothing left to cancel."""


class IngestService:
    """What the document and job routes call; `start()` after the engine has loaded."""

    def __init__(
        self, settings: Settings, documents: DocumentIndexer, jobs: JobStore | None = None,
        queue: JobQueue | None = None,
    ) -> None:
        """Cheap: builds parts; the queue starts consuming in `start()`."""
        self.documents = documents
        self.jobs = jobs or job_store(settings)
        self.intake = Intake(settings, documents, self.jobs)
        self.queue = queue or build_queue(settings, documents, self.jobs)
        self.started = False

    async def start(self) -> None:
        self.jobs.open()
        await asyncio.to_thread(self.intake.sweep_staging)
        await self.queue.start()
        self.started = True

    async def stop(self) -> None:
        if self.started:
            await self.queue.stop()
            self.started = False
        self.jobs.close()

    async def accept(
        self, files: Sequence[StagedFile], collection: str, metadata: Mapping[str, Any]
    ) -> list[Accepted]:
        """Store the files durably, then queue their new jobs; safe to answer 202 after."""
        accepted = await asyncio.to_thread(self.intake.accept, files, collection, metadata)
        for item in accepted:
            if item.new_job and item.job is not None:
                await self.queue.enqueue(item.job)
        return accepted

    async def queue_depth(self) -> int:
        """Jobs waiting in the queue, not the running ones; 0 until the queue has started."""
        return await self.queue.depth() if self.started else 0

    def job(self, job_id: str) -> Job:
        """A job record; once it is done, this process searches the index version it made.

        Asks pick up new index versions on their own, but at most every 0.5 s; a client that
        polled its job to done should find the document in its very next ask.
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"Job {job_id} does not exist.",
                           "Use the job_id that POST /v1/documents returned.")
        if job.state == "done":
            self.documents.refresh_index()
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; cancelling a cancelled job again is fine."""
        job = self.jobs.cancel(self.job(job_id).id) or self.job(job_id)
        if job.state != "cancelled":
            raise JobFinished(f"Job {job_id} already finished ({job.state}).",
                              "To remove its document, DELETE /v1/documents/{document_id}.")
        await self.queue.cancel(job)
        return job

    async def delete_document(self, doc_id: str) -> bool:
        """Cancel the active jobs of every version, then remove them all: vectors, chunks,
        files and cached answers."""
        versions = await asyncio.to_thread(self.documents.versions, doc_id)
        for version in versions:
            for job in self.jobs.active_for(version.id):
                self.jobs.cancel(job.id)
                await self.queue.cancel(job)
        return await asyncio.to_thread(self.documents.delete, doc_id)

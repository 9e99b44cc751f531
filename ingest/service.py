"""Wiring of ingestion for the API: job records, intake and the job queue, one object."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ingest.intake import Accepted, Intake, StagedFile
from ingest.jobs import Job, JobStore, job_store
from ingest.queue import JobQueue, build_queue
from rag.access import DEFAULT_TENANT, EVERYONE, REFUSED, Reader
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
        self, files: Sequence[StagedFile], collection: str, metadata: Mapping[str, Any],
        tenant: str = DEFAULT_TENANT, access: Sequence[str] = (),
    ) -> list[Accepted]:
        """Store the files durably in `tenant` (readable by `access` groups; none: the whole
        tenant), then queue their new jobs; safe to answer 202 after."""
        accepted = await asyncio.to_thread(self.intake.accept, files, collection, metadata,
                                           tenant, access)
        for item in accepted:
            if item.new_job and item.job is not None:
                await self.queue.enqueue(item.job)
        return accepted

    async def queue_depth(self) -> int:
        """Jobs waiting in the queue, not the running ones; 0 until the queue has started."""
        return await self.queue.depth() if self.started else 0

    def job(self, job_id: str, reader: Reader = EVERYONE) -> Job:
        """A job record, when `reader` may read its document (else NotFound, as for an unknown
        job); once it is done, this process searches the index version it made.

        Asks pick up new index versions on their own, but at most every 0.5 s; a client that
        polled its job to done should find the document in its very next ask.
        """
        job = self.jobs.get(job_id)
        if job is None or not self._readable(job, reader):
            raise NotFound(f"Job {job_id} does not exist.",
                           "Use the job_id that POST /v1/documents returned.")
        if job.state == "done":
            self.documents.refresh_index()
        return job

    def _readable(self, job: Job, reader: Reader) -> bool:
        """Whether `reader` may read the job's document (a refusal is counted); the job of a
        deleted document only the operator still reads (its tenant is gone with it)."""
        if reader.everything:
            return True
        doc = self.documents.get(job.document_id)
        if doc is not None and not reader.may_read(doc.tenant, doc.access):
            REFUSED.add("job")
            return False
        return doc is not None

    async def cancel(self, job_id: str, reader: Reader = EVERYONE) -> Job:
        """Cancel a queued or running job `reader` may read; cancelling a cancelled job again
        is fine."""
        job = self.jobs.cancel(self.job(job_id, reader).id) or self.job(job_id, reader)
        if job.state != "cancelled":
            raise JobFinished(f"Job {job_id} already finished ({job.state}).",
                              "To remove its document, DELETE /v1/documents/{document_id}.")
        await self.queue.cancel(job)
        return job

    async def delete_document(self, doc_id: str, reader: Reader = EVERYONE) -> bool:
        """Cancel the active jobs of every version, then remove them all: vectors, chunks,
        files and cached answers. False when there is no such document, or `reader` may not
        read every version of it (a refusal, answered alike)."""
        versions = await asyncio.to_thread(self.documents.deletable, doc_id, reader)
        if not versions:
            return False
        for version in versions:
            for job in self.jobs.active_for(version.id):
                self.jobs.cancel(job.id)
                await self.queue.cancel(job)
        return await asyncio.to_thread(self.documents.delete, doc_id)

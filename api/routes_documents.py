"""Documents and ingestion jobs: /v1/documents and /v1/jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.openapi.spec import (
    Encoding,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import Parameter
from pydantic import BaseModel, Field

from api.auth import READER, require_scope
from api.errors import api_errors
from api.readiness import engine_ready
from api.uploads import ACCESS_PATTERN, COLLECTION_PATTERN, accept_upload
from ingest.intake import Accepted
from ingest.jobs import Job
from ingest.service import IngestService, JobFinished
from rag.access import Reader
from rag.documents.indexer import DocumentIndexer
from rag.errors import Forbidden, InvalidInput, NotFound, TooLarge, UnsupportedType
from rag.types import Document

# Schemas


class VersionOut(BaseModel):
    """One version of a document."""

    id: str
    version: int
    size: int = Field(description="Bytes.")
    state: str = Field(description="As the document's; `replaced` once a newer one is indexed.")
    created_at: datetime

    @classmethod
    def of(cls, doc: Document) -> VersionOut:
        return cls(id=doc.id, version=doc.version, size=doc.size, state=doc.state,
                   created_at=_time(doc.created_at))


class DocumentOut(BaseModel):
    """An uploaded document; `id` is the SHA-256 of its bytes (in a tenant other than
    `default`, or with access groups, of the tenant, the groups and that hash). The same name
    in the same collection, tenant and groups uploaded with other bytes is its next version
    (a new id)."""

    id: str
    filename: str
    tenant: str = Field(description="The tenant of the key that uploaded it.")
    access: list[str] = Field(description="The groups that may read it within its tenant "
                              "(with its admin keys); empty: the whole tenant.")
    content_type: str
    size: int = Field(description="Bytes.")
    pages: int | None = Field(description="Pages, slides or sheets where the format has them.")
    chunk_count: int
    collection: str
    metadata: dict[str, Any]
    state: str = Field(description="queued, processing, indexed, failed, cancelled, or "
                       "replaced (a newer version of it is indexed).")
    error: str | None
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(description="Its latest ingestion job.")
    version: int = Field(description="Its version number, from 1.")
    replaces: str | None = Field(description="The version it replaces once indexed.")
    reused_chunks: int = Field(description="Chunks whose vectors were kept from the version "
                               "it replaced (same text); the rest were embedded.")
    versions: list[VersionOut] | None = Field(
        None, description="Every version, oldest first (GET of one document).")

    @classmethod
    def of(cls, doc: Document, job: Job | None,
           versions: list[Document] | None = None) -> DocumentOut:
        return cls(
            id=doc.id, filename=doc.filename, tenant=doc.tenant, access=list(doc.access),
            content_type=doc.content_type, size=doc.size, pages=doc.pages,
            chunk_count=doc.chunk_count, collection=doc.collection,
            metadata=dict(doc.metadata), state=doc.state, error=doc.error,
            created_at=_time(doc.created_at), updated_at=_time(doc.updated_at),
            job_id=job.id if job else None, version=doc.version, replaces=doc.replaces,
            reused_chunks=doc.reused_chunks,
            versions=None if versions is None else [VersionOut.of(v) for v in versions],
        )


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    total: int
    offset: int
    limit: int


class UploadedOut(BaseModel):
    document_id: str
    job_id: str | None
    filename: str
    state: str = Field(description="The document's state.")
    job_state: str | None
    duplicate: bool = Field(description="These bytes were uploaded before (in this tenant, for "
                            "these groups).")
    version: int = Field(description="Its version: above 1 when it replaces a document of the "
                         "same name in the collection once indexed.")


class UploadOut(BaseModel):
    """Accepted: the files are stored and their jobs queued; poll GET /v1/jobs/{job_id}."""

    documents: list[UploadedOut]
    warnings: list[str] = Field(
        description="What the upload may not mean: an access group no key of the tenant "
        "holds, or access groups that leave the uploading key unable to read its file.")


class DeletedOut(BaseModel):
    id: str
    deleted: bool = Field(description="False when there was no such document.")


class ProgressOut(BaseModel):
    done: int = Field(description="Chunks embedded so far.")
    total: int | None = Field(description="Chunks in the document, once known.")
    estimated_total: int | None = Field(description="Estimate from the size while unknown.")
    fraction: float | None


class JobOut(BaseModel):
    """An ingestion job."""

    id: str
    document_id: str
    filename: str
    state: str = Field(description="queued, running, done, failed or cancelled.")
    stage: str | None = Field(description="parse, chunk, embed or index.")
    progress: ProgressOut
    eta_s: float | None = Field(description="Seconds left, estimated while it runs.")
    timings_s: dict[str, float] = Field(description="Seconds spent per stage.")
    attempts: int
    max_attempts: int
    error: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        total = job.total or job.estimate
        fraction = 1.0 if job.state == "done" else (
            min(job.done / total, 0.99) if total and job.state == "running" else None)
        return cls(
            id=job.id, document_id=job.document_id, filename=job.filename, state=job.state,
            stage=job.stage,
            progress=ProgressOut(done=job.done, total=job.total, estimated_total=job.estimate,
                                 fraction=fraction),
            eta_s=job.eta_s(), timings_s=dict(job.timings), attempts=job.attempts,
            max_attempts=job.max_attempts, error=job.error, worker=job.worker,
            created_at=_time(job.created_at), started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
        )


def _time(epoch: float | None) -> Any:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


DOCUMENT_MEDIA_TYPES = (
    "text/plain", "text/markdown", "text/x-rst", "text/html", "application/xml", "text/csv",
    "application/json", "message/rfc822", "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
)


@dataclass
class _UploadOperation(Operation):
    """The multipart body, described by hand: the handler streams it itself."""

    def __post_init__(self) -> None:
        text, binary = OpenAPIType.STRING, OpenAPIFormat.BINARY
        form = Schema(type=OpenAPIType.OBJECT, required=["file"], additional_properties=False,
                      properties={
            "file": Schema(type=OpenAPIType.ARRAY, items=Schema(type=text, format=binary),
                           min_items=1, description="One or more files (repeat the part): "
                           "documents with text, judged by content (see `encoding`)."),
            "collection": Schema(type=text, pattern=COLLECTION_PATTERN,
                                 description="Collection (empty or absent: default)."),
            "metadata": Schema(type=OpenAPIType.OBJECT,
                               description="A JSON object kept with each file."),
            "access": Schema(type=text, pattern=ACCESS_PATTERN,
                             description='A JSON list of at most 32 groups, e.g. ["legal"]: '
                             "only keys holding one of them (and the tenant's admin keys) "
                             "read the files. Absent or empty: every key of the uploading "
                             "key's tenant."),
        })
        encoding = {"file": Encoding(content_type=", ".join(DOCUMENT_MEDIA_TYPES)),
                    "metadata": Encoding(content_type="application/json")}
        self.request_body = RequestBody(required=True, content={
            "multipart/form-data": OpenAPIMediaType(schema=form, encoding=encoding)})


# Handlers

INGEST = [require_scope("ingest")]  # admin keys pass too; open mode lets everyone
INGEST_READY = [*INGEST, engine_ready]  # and the engine has loaded (else 503, as its parts)
MAX_OFFSET = 10**9
USAGE = "Send multipart/form-data with one or more `file` parts."
UNKNOWN_DOCUMENT = (
    "No document has this id.",
    NotFound("Document 9f86d081884c7d65 does not exist.", "List documents with GET /v1/documents."))
UNKNOWN_JOB = (
    "No job has this id.",
    NotFound("Job 42 does not exist.", "Use the job_id that POST /v1/documents returned."))
UPLOAD_ERRORS = api_errors("ingest", {
    403: ("The key lacks the `ingest` scope, or its `access` names none of the key's groups "
          "(only an admin key gives documents to groups it is not in).",
          Forbidden('This key holds none of the access groups ["board"].',
                    "Upload with a group of this key's, or with an admin key of the tenant.")),
    413: ("The request, a file or a form field is over its limit, or it has too many files.",
          TooLarge("report.pdf is over the limit of 52428800 bytes.",
                   "Split the document into smaller files, or raise RAG_MAX_FILE_BYTES.")),
    415: ("The body is not multipart/form-data, or a file is of a type it cannot read "
          "(judged by its content).",
          UnsupportedType("Uploads must be multipart/form-data, not application/json.", USAGE)),
    422: ("No files, an empty or corrupt file, a malformed body, an unknown field, or a bad "
          "collection name, metadata or access list.",
          InvalidInput("The request holds no files.", USAGE)),
})




@post("/v1/documents", status_code=202, tags=["documents"], guards=INGEST_READY,
      request_max_body_size=None, operation_class=_UploadOperation, responses=UPLOAD_ERRORS)
async def upload_documents(
    request: Request[Any, Any, Any], ingestion: IngestService
) -> UploadOut:
    """Upload one or more files (multipart/form-data) to be parsed, chunked, embedded and
    indexed, in the tenant of the key, readable by the `access` groups if given. Answers 202
    once the files and their jobs are stored; the same bytes uploaded again in the tenant, for
    the same groups, point at the existing document. Refuses oversized requests or files (413),
    types it cannot read, judged by content (415), and empty or malformed uploads (422)."""
    accepted, warnings = await accept_upload(request, ingestion)
    return UploadOut(documents=[_uploaded(a) for a in accepted], warnings=warnings)


def _uploaded(a: Accepted) -> UploadedOut:
    return UploadedOut(document_id=a.document.id, job_id=a.job.id if a.job else None,
                       filename=a.document.filename, state=a.document.state,
                       job_state=a.job.state if a.job else None, duplicate=a.duplicate,
                       version=a.document.version)


@get("/v1/documents", tags=["documents"], guards=INGEST, sync_to_thread=True,
     dependencies=READER, responses=api_errors("ingest", {}))
def list_documents(
    documents: DocumentIndexer,
    ingestion: IngestService,
    reader: Reader,
    collection: str | None = None,
    offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
) -> DocumentPage:
    """List the documents the key may read (their current versions: none `replaced`),
    oldest first, optionally in one collection."""
    docs, total = documents.page(collection, offset, limit, reader)
    items = [DocumentOut.of(d, ingestion.jobs.latest_for(d.id)) for d in docs]
    return DocumentPage(items=items, total=total, offset=offset, limit=limit)


@get("/v1/documents/{document_id:str}", tags=["documents"], guards=INGEST,
     sync_to_thread=True, dependencies=READER,
     responses=api_errors("ingest", {404: UNKNOWN_DOCUMENT}))
def get_document(
    document_id: str, documents: DocumentIndexer, ingestion: IngestService, reader: Reader
) -> DocumentOut:
    """One document: file, type, size, pages, chunk count, collection, metadata, state, and
    every version of it (an old version's id answers too, with state `replaced`). A document
    the key may not read answers 404, as one that does not exist."""
    doc = documents.readable(document_id, reader)
    return DocumentOut.of(doc, ingestion.jobs.latest_for(doc.id),
                          documents.versions(doc.id, reader))


@delete("/v1/documents/{document_id:str}", tags=["documents"], guards=INGEST_READY, status_code=200,
        dependencies=READER, responses=api_errors("ingest", {}))
async def delete_document(
    document_id: str, ingestion: IngestService, reader: Reader
) -> DeletedOut:
    """Delete a document with every version of it (any version's id will do): their vectors,
    chunks, stored files and every cached answer citing them. Idempotent: deleting an absent
    document, or one the key may not read, answers 200 with `deleted: false`."""
    return DeletedOut(id=document_id,
                      deleted=await ingestion.delete_document(document_id, reader))


@get("/v1/jobs/{job_id:str}", tags=["jobs"], guards=INGEST, sync_to_thread=True,
     dependencies=READER, responses=api_errors("ingest", {404: UNKNOWN_JOB}))
def get_job(job_id: str, ingestion: IngestService, reader: Reader) -> JobOut:
    """An ingestion job: state, stage, progress with ETA, timings, attempts and error. The job
    of a document the key may not read answers 404, as an unknown one."""
    return JobOut.of(ingestion.job(job_id, reader))


@post("/v1/jobs/{job_id:str}/cancel", tags=["jobs"], guards=INGEST, status_code=200,
      dependencies=READER, responses=api_errors("ingest", {404: UNKNOWN_JOB, 409: (
            "The job already finished (done or failed).",
            JobFinished("Job 42 already finished (done).",
                        "To remove its document, DELETE /v1/documents/{document_id}."))}))
async def cancel_job(job_id: str, ingestion: IngestService, reader: Reader) -> JobOut:
    """Cancel a queued or running job (409 when it already finished); nothing of it stays
    indexed. The job stays readable with state `cancelled`; cancelling it again is fine."""
    return JobOut.of(await ingestion.cancel(job_id, reader))


ROUTES = [upload_documents, list_documents, get_document, delete_document, get_job, cancel_job]

"""Accepting uploads: check each file, keep it by its id, record its document and job.

The API streams each uploaded file into a staging folder next to the uploads (same file
system, so keeping it is a rename), hashing it on the way. `Intake.accept` then checks every
file of the request before storing any of them, so a request is taken whole or refused whole.
When `accept` returns, the bytes, the document row and the job record are all on disk
(fsync'd), which is what lets the API answer 202.

A document's id is its hash within the uploading tenant (`rag.access.document_id`): the same
bytes in one tenant are one document, in two tenants two.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ingest.jobs import Job, JobStore
from rag.access import DEFAULT_TENANT, document_id, group_list
from rag.documents.detection import SUPPORTED, inspect_file
from rag.documents.indexer import DocumentIndexer
from rag.files import disk_full, is_disk_full
from rag.settings import Settings
from rag.types import Document

log = logging.getLogger(__name__)

# control and reserved characters, and the bidi controls that make "evil\u202etxt.exe" read as
# "evilexe.txt"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
MAX_FILENAME_CHARS = 200


@dataclass(frozen=True)
class StagedFile:
    """An uploaded file written to the staging folder as it arrived."""

    path: Path  # <uploads>/.incoming/<random>/upload
    filename: str  # sanitized
    size: int
    sha256: str


@dataclass(frozen=True)
class Accepted:
    """What became of one uploaded file."""

    document: Document
    job: Job | None  # None only for a document indexed before job records existed
    duplicate: bool  # the same bytes were already uploaded (in this tenant)
    new_job: bool  # a job was created for this upload (and must be enqueued)


@dataclass(frozen=True)
class Placement:
    """Where a request's files go: collection and metadata, the uploading key's tenant and the
    groups that may read them (empty: the whole tenant)."""

    collection: str = "default"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tenant: str = DEFAULT_TENANT
    access: tuple[str, ...] = ()


def sanitize_filename(name: str | None) -> str:
    """The last path component, without control or reserved characters; never empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = PureWindowsPath(PurePosixPath(name.replace("\\", "/")).name).name
    name = _UNSAFE.sub("_", name).strip(" .")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, suffix = name.rpartition(".")
        keep = suffix[:16] if dot else ""
        name = (stem if dot else name)[: MAX_FILENAME_CHARS - len(keep) - 1] + (
            f".{keep}" if keep else "")
    return name or "upload"


class Intake:
    """Turns staged uploads into stored documents with queued jobs."""

    def __init__(self, settings: Settings, documents: DocumentIndexer, jobs: JobStore) -> None:
        self.settings = settings
        self.documents = documents
        self.jobs = jobs
        self._lock = threading.Lock()  # one request at a time decides "new or duplicate"

    def staging_dir(self) -> Path:
        """A fresh folder for one upload (removed by `discard`)."""
        path = self.settings.uploads_dir / ".incoming" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def sweep_staging(self, older_than_s: float = 3600.0) -> int:
        """Remove what uploads cut short by a crash left in staging; returns folders removed."""
        root = self.settings.uploads_dir / ".incoming"
        cutoff = time.time() - older_than_s  # younger ones may belong to a running upload
        stale = [p for p in root.iterdir() if p.stat().st_mtime < cutoff] if root.exists() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def discard(self, files: Sequence[StagedFile]) -> None:
        for staged in files:
            shutil.rmtree(staged.path.parent, ignore_errors=True)

    def check(self, staged: StagedFile) -> str:
        """The file's content type; raises EmptyDocument, TooLarge or UnsupportedType."""
        return SUPPORTED[inspect_file(staged.path, staged.filename, self.settings)]

    def accept(
        self, files: Sequence[StagedFile], collection: str, metadata: Mapping[str, Any],
        tenant: str = DEFAULT_TENANT, access: Sequence[str] = (),
    ) -> list[Accepted]:
        """Check every file, then keep each one durably with its document and job, in
        `tenant`, readable by `access` groups (none: the whole tenant)."""
        place = Placement(collection, metadata, tenant, group_list(access))
        try:
            types = [self.check(staged) for staged in files]
            with self._lock:
                done: list[Accepted] = []
                try:
                    for staged, content_type in zip(files, types, strict=True):
                        done.append(self._accept_one(staged, content_type, place))
                except BaseException as exc:
                    self._undo(done)  # the request is taken whole or refused whole
                    if is_disk_full(exc):
                        log.error("upload refused, the data disk is full: %s", exc)
                        raise disk_full("the upload") from exc
                    raise
                return done
        finally:
            self.discard(files)

    def _undo(self, accepted: Sequence[Accepted]) -> None:
        """Remove what this request newly stored (files, documents, jobs) before failing."""
        for item in accepted:
            if item.duplicate or not item.new_job or item.job is None:
                continue
            try:
                self.documents.drop_upload(item.document.id)
                self.jobs.withdraw(item.job.id)
                self.documents.drop_record(item.document.id)
            except Exception as exc:  # the disk may still refuse; the sweep at start retries
                log.error("could not undo the upload of %s: %s", item.document.id, exc)

    def _accept_one(self, staged: StagedFile, content_type: str, place: Placement) -> Accepted:
        doc_id = document_id(staged.sha256, place.tenant, place.access)
        existing = self.documents.get(doc_id)
        active = self.jobs.active_for(doc_id)
        current = existing is not None and existing.state != "replaced"  # else: a revert
        if existing is not None and current and (existing.state == "indexed" or active):
            job = active[0] if active else self.jobs.latest_for(doc_id)
            return Accepted(existing, job, duplicate=True, new_job=False)
        kept = self.documents.keep_upload(staged.path, doc_id)
        try:  # a new version when its name holds a current document of the collection
            document = self.documents.register(Document(
                id=doc_id, filename=staged.filename, content_type=content_type,
                size=staged.size, collection=place.collection, metadata=dict(place.metadata),
                tenant=place.tenant, access=place.access))
            job, created = self.jobs.submit(doc_id, staged.filename, content_type,
                                            staged.size, self.settings.job_attempts)
        except BaseException:
            if kept:  # first the bytes (frees space), then the row they belonged to
                self.documents.drop_upload(doc_id)
            if existing is None:
                with contextlib.suppress(Exception):
                    self.documents.drop_record(doc_id)
            raise
        return Accepted(document, job, duplicate=existing is not None, new_job=created)

"""Reading `POST /v1/documents` bodies: streaming multipart, with the limits enforced early.

The body is parsed as it arrives (the `multipart` library Litestar itself uses); each file
goes straight to a staging file on disk while it is hashed, so memory stays flat whatever the
size. A request announcing more than RAG_MAX_REQUEST_BYTES is refused before a byte is read;
a file passing RAG_MAX_FILE_BYTES, or one file too many, stops the read at that point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from litestar import Request
from multipart import (
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
)

from api.auth import Caller, caller_of, keys_on, known_groups
from ingest.intake import Accepted, Intake, StagedFile, sanitize_filename
from ingest.service import IngestService
from rag.access import NAME_PATTERN, group_list, valid_name
from rag.documents.detection import check_size
from rag.errors import (
    Forbidden,
    InvalidInput,
    RagError,
    SlowRequest,
    TooLarge,
    UnsupportedType,
)
from rag.files import disk_full, is_disk_full
from rag.settings import Settings
from rag.types import Document

log = logging.getLogger(__name__)

FIELDS = ("collection", "metadata", "access")
MAX_FIELD_BYTES = 64 * 1024
COLLECTION_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$"  # empty: the default collection
COLLECTION = re.compile(COLLECTION_PATTERN)
MAX_ACCESS_GROUPS = 32
# The `access` field as the OpenAPI document states it: a JSON list of at most 32 group names
# (JSON whitespace around the tokens), or nothing.
JSON_SPACE = " \t\n\r"
_SPACE, _GROUP = r"[ \t\n\r]*", '"' + NAME_PATTERN.strip("^$") + '"'
ACCESS_PATTERN = (rf"^{_SPACE}(\[{_SPACE}({_GROUP}{_SPACE}(,{_SPACE}{_GROUP}{_SPACE})"
                  rf"{{0,{MAX_ACCESS_GROUPS - 1}}})?\]{_SPACE})?$")
USAGE = ("Send multipart/form-data with one or more `file` parts, e.g. "
         "`curl -F file=@report.pdf -F collection=docs http://host/v1/documents`.")


@dataclass
class UploadForm:
    files: list[StagedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    collection: str = "default"
    metadata: dict[str, Any] = field(default_factory=dict)
    access: tuple[str, ...] = ()  # groups that may read the files (empty: the whole tenant)


def _collection(fields: dict[str, str]) -> str:
    name = fields.get("collection", "")
    if not COLLECTION.fullmatch(name):
        raise InvalidInput(f"Collection name {name[:80]!r} is not allowed.",
                           "Use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                           "or digit.")
    return name or "default"


def _metadata(fields: dict[str, str]) -> dict[str, Any]:
    raw = fields.get("metadata", "").strip()
    if not raw:
        return {}
    hint = 'Send a JSON object, e.g. {"team": "support"}.'
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"The metadata field is not valid JSON ({exc}).", hint) from exc
    if not isinstance(value, dict):
        raise InvalidInput("The metadata field must be a JSON object.", hint)
    return value


def _access(fields: dict[str, str]) -> tuple[str, ...]:
    """The `access` field: a JSON list of group names (absent, empty or `[]`: none)."""
    raw = fields.get("access", "").strip(JSON_SPACE)
    if not raw:
        return ()
    hint = (f'Send a JSON list of at most {MAX_ACCESS_GROUPS} group names, e.g. ["legal"]: '
            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"The access field is not valid JSON ({exc}).", hint) from exc
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise InvalidInput("The access field must be a JSON list of group names.", hint)
    if len(value) > MAX_ACCESS_GROUPS:
        raise InvalidInput(f"The access field names {len(value)} groups, over the limit of "
                           f"{MAX_ACCESS_GROUPS}.", hint)
    bad = next((g for g in value if not valid_name(g)), None)
    if bad is not None:
        raise InvalidInput(f"Group name {bad[:80]!r} in the access field is not allowed.", hint)
    return group_list(value)


async def accept_upload(
    request: Request[Any, Any, Any], ingestion: IngestService
) -> tuple[list[Accepted], list[str]]:
    """Read the form and store its files in the caller's tenant: what became of each file,
    and warnings about the access it asked for."""
    caller = caller_of(request)
    form = await read_upload(request, ingestion.intake)
    try:
        check_access(caller, form.access)
    except RagError:
        ingestion.intake.discard(form.files)
        raise
    accepted = await ingestion.accept(form.files, form.collection, form.metadata,
                                      caller.upload_tenant, form.access)
    return accepted, access_warnings(request, caller, accepted)


def check_access(caller: Caller, access: Sequence[str]) -> None:
    """A key gives a document to groups only when it holds one of them (an admin key to any
    groups of its tenant): else it could replace, or learn of, a same-named document of a
    group it is not in, which the name's versions and the id would tie its upload to."""
    reader = caller.reader
    if access and not (reader.all_groups or reader.everything) \
            and reader.groups.isdisjoint(access):
        raise Forbidden(f"This key holds none of the access groups {json.dumps(list(access))}.",
                        "Upload with a group of this key's, or with an admin key of the tenant.")


def access_warnings(
    request: Request[Any, Any, Any], caller: Caller, accepted: list[Accepted]
) -> list[str]:
    """Warnings for access groups no key of the tenant holds (none in open mode): only the
    tenant's admin keys, and keys given those groups later, can read such documents."""
    if not keys_on(request):
        return []
    tenant = caller.upload_tenant
    docs = [a.document for a in accepted]
    unknown = sorted({g for d in docs for g in d.access} - known_groups(request, tenant))
    return [f'Group "{group}" in access is held by no API key of tenant "{tenant}"; only '
            f"its admin keys can read {_names(d for d in docs if group in d.access)}."
            for group in unknown]


def _names(docs: Iterable[Document]) -> str:
    return ", ".join(sorted({d.filename for d in docs}))


async def read_upload(request: Request[Any, Any, Any], intake: Intake) -> UploadForm:
    """Stream the multipart body to staging files; raise a RagError for any bad request."""
    settings = intake.settings
    boundary = _boundary(request, settings)
    reader = _FormReader(intake, settings)
    try:
        parser = PushMultipartParser(boundary, max_segment_count=settings.max_files_per_request
                                     + len(FIELDS) + 1)
        with parser:
            async for chunk in _stream(request, settings.upload_idle_timeout_s):
                reader.count(len(chunk))
                for event in parser.parse(chunk):
                    reader.feed(event)
                if parser.closed:
                    break
    except ParserLimitReached as exc:
        reader.abandon()
        raise TooLarge(f"The request has too many parts ({exc}).",
                       f"Send at most {settings.max_files_per_request} files per request.") from exc
    except ParserError as exc:
        reader.abandon()
        raise InvalidInput(f"The multipart body is malformed: {exc}.", USAGE) from exc
    except OSError as exc:
        reader.abandon()
        if is_disk_full(exc):
            log.error("upload refused, the data disk is full: %s", exc)
            raise disk_full("the upload") from exc
        raise
    except BaseException:
        reader.abandon()
        raise
    form = reader.form
    try:  # bad fields are refused before anything is stored
        if not form.files:
            raise InvalidInput("The request holds no files.", USAGE)
        form.collection, form.metadata = _collection(form.fields), _metadata(form.fields)
        form.access = _access(form.fields)
    except RagError:
        reader.abandon()
        raise
    return form


async def _stream(request: Request[Any, Any, Any], idle_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; a client that sends nothing for `idle_s` (slowloris) is refused."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise SlowRequest(f"The upload stalled: nothing arrived for {idle_s:g} s.",
                              "Send the body without pauses, or raise "
                              "RAG_UPLOAD_IDLE_TIMEOUT_S.") from exc
        yield chunk


def _boundary(request: Request[Any, Any, Any], settings: Settings) -> str:
    media_type, options = request.content_type
    if media_type != "multipart/form-data":
        raise UnsupportedType(f"Uploads must be multipart/form-data, not {media_type or 'empty'}.",
                              USAGE)
    if not options.get("boundary"):
        raise InvalidInput("The multipart Content-Type has no boundary.", USAGE)
    length = request.content_length
    if length is not None and length > settings.max_request_bytes:
        raise TooLarge(f"The request is {length} bytes, over the limit of "
                       f"{settings.max_request_bytes} bytes.",
                       "Send fewer or smaller files per request, or raise "
                       "RAG_MAX_REQUEST_BYTES.")
    return options["boundary"]


class _FormReader:
    """Consumes parser events: files to staging files, the few text fields to memory."""

    def __init__(self, intake: Intake, settings: Settings) -> None:
        self.intake = intake
        self.settings = settings
        self.form = UploadForm()
        self.received = 0
        self._segment: MultipartSegment | None = None
        self._file: IO[bytes] | None = None
        self._staged: tuple[str, Any] | None = None  # (filename, path) of the open file
        self._hash = hashlib.sha256()
        self._size = 0
        self._text = bytearray()

    def count(self, size: int) -> None:
        self.received += size
        if self.received > self.settings.max_request_bytes:
            raise TooLarge(f"The request is over the limit of {self.settings.max_request_bytes} "
                           "bytes.", "Send fewer or smaller files per request, or raise "
                           "RAG_MAX_REQUEST_BYTES.")

    def feed(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self._begin(event)
        elif event:
            self._data(event)
        else:
            self._end()

    def _begin(self, segment: MultipartSegment) -> None:
        self._segment = segment
        if segment.filename is None and segment.name != "file":  # a `file` part may lack a name
            if segment.name not in FIELDS:
                raise InvalidInput(f"Unknown form field {segment.name[:80]!r}.",
                                   f"Send files as file parts; text fields: {', '.join(FIELDS)}.")
            self._text = bytearray()
            return
        if len(self.form.files) >= self.settings.max_files_per_request:
            raise TooLarge(f"The request holds more than {self.settings.max_files_per_request} "
                           "files.", "Split the upload over several requests, or raise "
                           "RAG_MAX_FILES_PER_REQUEST.")
        name = sanitize_filename(segment.filename or "file")
        path = self.intake.staging_dir() / "upload"  # the name may be too long for the disk
        self._staged = (name, path)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _end or abandon
        self._hash = hashlib.sha256()
        self._size = 0

    def _data(self, data: bytes) -> None:
        if self._file is None:
            self._text.extend(data)
            if len(self._text) > MAX_FIELD_BYTES:
                raise TooLarge(f"Form field {self._segment.name if self._segment else ''!r} is "
                               f"over {MAX_FIELD_BYTES} bytes.", "Send less metadata.")
            return
        self._size += len(data)
        check_size(self._size, self._staged[0] if self._staged else "a file", self.settings)
        self._hash.update(data)
        self._file.write(data)

    def _end(self) -> None:
        if self._file is None:
            if self._segment is not None:
                self.form.fields[self._segment.name] = self._text.decode(
                    self._segment.charset or "utf-8", errors="replace")
            return
        self._file.close()
        self._file = None
        assert self._staged is not None
        name, path = self._staged
        self.form.files.append(StagedFile(path, name, self._size, self._hash.hexdigest()))
        self._staged = None

    def abandon(self) -> None:
        """Close and remove whatever was staged for this request."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._staged is not None:
            staged = StagedFile(self._staged[1], self._staged[0], self._size, "")
            self.form.files.append(staged)
        self.intake.discard(self.form.files)
        self.form.files = []

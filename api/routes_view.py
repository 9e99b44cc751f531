"""The source of a quote: GET /v1/documents/{id}/view (the quote marked in its source),
/pages/{n} (a PDF page as PNG) and /file (the original bytes).

The view and its page images open with the signed token of a citation's `view_url` (no key
header, so a browser opens them in a new tab) or with a key that has the ask scope; the file
needs the ingest scope. In open mode (no keys) everything opens.

A key reads only the documents its tenant and groups may read: any other is a 404 exactly like
an unknown document (never 403, which would confirm it exists), counted as a refused `view`. A
valid token opens its one document whoever sends it: it was minted in an answer given to a key
that could read it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from litestar import MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import KwargDefinition, Parameter
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from api.auth import READER, has_scope, keys_on, reader_of, require_scope
from api.errors import api_errors
from api.view import HEADERS, view_page
from api.view_links import TOKEN_HINT, ViewLinks
from rag.access import EVERYONE, Reader
from rag.documents.sources import Sources
from rag.errors import Forbidden, NotFound, Overloaded

UNKNOWN = ("No document has this id that the key may read (it may have been deleted), or "
           "it has no text at `start`-`end`, or no such page.",
           NotFound("Document 9f86d081884c7d65 does not exist (it may have been deleted).",
                    "Ask again: answers cite the documents there are now."))
TOKEN_REFUSED = ("The `token` is altered, expired or for another document (and no key with "
                 "the ask scope was sent).",
                 Forbidden("The view link has expired.", TOKEN_HINT))
REVERSED = ValidationException("Validation failed for GET /v1/documents/9f86d081884c7d65/view",
                               extra=[{"message": "`end` must be greater than `start`",
                                       "key": "end", "source": "query"}])
BAD_PARAMETER = ("A parameter of the wrong type or out of range, or `end` not greater than "
                 "`start`; `details` lists them.", REVERSED)
BUSY = ("Models or index not loaded yet (see /ready), or PDF pages are busy being rendered "
        "(with Retry-After).",
        Overloaded("PDF pages are busy being read (waited 10 s for pdfium).",
                   "Retry in a few seconds."))
VIEW_ERRORS = api_errors("ask", {400: BAD_PARAMETER, 403: TOKEN_REFUSED, 404: UNKNOWN,
                                 503: BUSY})
PAGE_ERRORS = api_errors("ask", {403: TOKEN_REFUSED, 503: BUSY, 404: (
    "No document has this id, it is not a PDF, it has no such page, or its uploaded file is "
    "missing or unreadable.", UNKNOWN[1])})
VIEW_OK = ("The HTML page: the quote marked in its source (for a PDF, boxed on its rendered "
           "page, then in the parsed text around it).")
PNG = ResponseSpec(Annotated[bytes, KwargDefinition(format=OpenAPIFormat.BINARY)],
                   description="The page rendered as a PNG image (at most 8 million pixels).",
                   media_type="image/png", generate_examples=False)
NEEDS_ASK = require_scope("ask")  # 401 or 403 as every ask route answers
TOKEN = Parameter(description="The signed token of a `view_url` (needed with keys on, unless "
                  "a key with the ask scope is sent).", required=False)


class Download(Stream):
    """A stream whose own media type wins over its route's (Litestar's `Stream` lets the
    route's win), since each file keeps the type it was uploaded with."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": None})


def view_access(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
                ) -> None:
    """Open mode, a key with the ask scope, or a valid token for this document; else 401
    (nothing sent) or 403 (a bad token, or a key without the scope)."""
    if not keys_on(connection) or has_scope(connection, "ask"):
        return
    token = connection.query_params.get("token")
    if token:
        links: ViewLinks = connection.app.state["view_links"]
        links.check(token, connection.path_params["document_id"])
        return
    NEEDS_ASK(connection, handler)


def view_reader(request: Request[Any, Any, Any], view_links: ViewLinks) -> Reader:
    """Who reads a view or page: anyone, for the one document a valid token was minted for;
    else the key's reader (open mode: everyone)."""
    if view_links.opens(request.query_params.get("token"), request.path_params["document_id"]):
        return EVERYONE
    return reader_of(request)


VIEW_READER = {"reader": Provide(view_reader, sync_to_thread=False)}


@get("/v1/documents/{document_id:str}/view", tags=["documents"], guards=[view_access],
     dependencies=VIEW_READER,
     media_type=MediaType.HTML, sync_to_thread=True, response_description=VIEW_OK,
     responses=VIEW_ERRORS)
def view_source(
    document_id: str, sources: Sources, view_links: ViewLinks, reader: Reader,
    start: Annotated[int, Parameter(ge=0, description="Offset of the quote in the parsed "
                                    "document.")],
    end: Annotated[int, Parameter(ge=1, description="Offset just past the quote "
                                  "(greater than `start`).")],
    page: Annotated[int | None, Parameter(ge=1, description="Page the quote is on.")] = None,
    token: Annotated[str | None, TOKEN] = None,
) -> Response[str]:
    """A page showing the quote [start, end) in its source, marked and scrolled into view: for
    a PDF its page as it looks with the quote marked on it, then the parsed text around the
    quote. Citations and evidence link here (`view_url`)."""
    if end <= start:
        raise ValidationException(f"Validation failed for GET /v1/documents/{document_id}/view",
                                  extra=REVERSED.extra)
    passage = sources.passage(document_id, start, end, page, reader)
    image = (view_links.page_url(document_id, passage.page)
             if passage.on_page is not None and passage.page is not None else None)
    return Response(view_page(passage, image), media_type=MediaType.HTML, headers=HEADERS)


@get("/v1/documents/{document_id:str}/pages/{page:int}", tags=["documents"],
     guards=[view_access], dependencies=VIEW_READER, media_type="image/png",
     sync_to_thread=True,
     responses={200: PNG, **PAGE_ERRORS})
def page_image(
    document_id: str, sources: Sources, reader: Reader,
    page: Annotated[int, Parameter(ge=1, le=100_000, description="Page number, from 1.")],
    token: Annotated[str | None, TOKEN] = None,
) -> Response[bytes]:
    """Page `page` of a PDF document, rendered as PNG (the source view shows it)."""
    return Response(sources.page_image(document_id, page, reader), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300",
                             "X-Content-Type-Options": "nosniff"})


@get("/v1/documents/{document_id:str}/file", tags=["documents"],
     guards=[require_scope("ingest")], dependencies=READER, media_type=MediaType.TEXT,
     sync_to_thread=True,
     responses={200: ResponseSpec(bytes, description="The uploaded bytes, with the media type "
                                  "the document was stored with.", media_type="*/*",
                                  generate_examples=False),
                **api_errors("ingest", {404: (
                    "No document has this id that this key may read (or its file is "
                    "missing).", UNKNOWN[1])})})
def document_file(document_id: str, sources: Sources, reader: Reader) -> Download:
    """The original file of a document, as uploaded, with its media type; a download
    (Content-Disposition: attachment, with the file's name). Needs the ingest scope and a key
    that may read the document."""
    doc, blocks = sources.original(document_id, reader)
    return Download(blocks, media_type=doc.content_type, headers={
        "Content-Disposition": _attachment(doc.filename), "Content-Length": str(doc.size),
        "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"})


def _attachment(filename: str) -> str:
    """A download named `filename` (RFC 6266: an ASCII fallback, then the UTF-8 name)."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "document"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


ROUTES = [view_source, page_image, document_file]

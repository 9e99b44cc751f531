"""The one place where errors become HTTP responses (and the bodies of streamed `error` events).

`RAG_STATUSES` gives each engine error kind (`rag.errors`, plus ingest's `JobFinished`) its HTTP
status; a kind not listed takes its nearest listed parent's (`rag_status`). `describe` maps
every error to a status and an `ErrorOut` body; `error_responses` documents a route's error
statuses in the OpenAPI document with that one schema, each example being the body `describe`
makes of an error raised for that status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    SerializationException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.types import ExceptionHandlersMap
from pydantic import BaseModel, Field

from ingest.service import JobFinished
from rag.errors import (
    ConfigError,
    DiskFull,
    Forbidden,
    InvalidFilter,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    RagError,
    RateLimited,
    SlowRequest,
    TooLarge,
    Unauthorized,
    UnsupportedType,
)

log = logging.getLogger(__name__)

# error name and what to do, for the HTTP errors Litestar and our guards raise
HTTP_ERRORS = {
    400: ("BadRequest", "Fix the request as described and send it again."),
    401: ("Unauthorized",
          "Send a valid key as `Authorization: Bearer <key>` or `X-API-Key: <key>`."),
    403: ("Forbidden", "Use a key that has the needed scope."),
    404: ("NotFound", "Check the id or path."),
    405: ("MethodNotAllowed", "Use one of the methods this route allows (see /schema)."),
    413: ("TooLarge", "Send less data."),
    415: ("UnsupportedMediaType", "Send a supported content type (see /schema)."),
    429: ("RateLimited", "Wait for the seconds given in Retry-After, then retry."),
}

# HTTP status of each engine error kind; subclasses not listed map like their parent (e.g.
# EmptyDocument as InvalidInput, StoreUnavailable as NotReady, IndexMismatch as ConfigError).
RAG_STATUSES: dict[type[RagError], int] = {
    RagError: 400,
    InvalidInput: 422,
    InvalidFilter: 400,  # a request field's value, like a malformed body's
    SlowRequest: 408,
    NotFound: 404,
    JobFinished: 409,
    TooLarge: 413,
    UnsupportedType: 415,
    RateLimited: 429,
    Unauthorized: 401,
    Forbidden: 403,
    ConfigError: 500,
    NotReady: 503,
    Overloaded: 503,
    DiskFull: 507,
}


def rag_status(exc: RagError) -> int:
    """HTTP status of an engine error: its class's entry in `RAG_STATUSES`, or its nearest
    listed ancestor's (along the MRO)."""
    for kind in type(exc).__mro__:
        if issubclass(kind, RagError) and kind in RAG_STATUSES:
            return RAG_STATUSES[kind]
    return RAG_STATUSES[RagError]  # not reached: RagError itself is listed


class ErrorOut(BaseModel):
    """Every error: its kind (`error`), what was wrong (`message`), what to do (`hint`) and, for
    an invalid request, the problem of each field (`details`)."""

    error: str = Field(description="Kind of error, e.g. NotFound, InvalidInput, RateLimited.")
    message: str = Field(description="What was wrong.")
    hint: str = Field(description="What to do about it.")
    details: list[dict[str, Any]] | None = Field(
        None, description="Per-field problems of an invalid request (`key`, `message`, "
        "`source`); absent otherwise.")


def error_body(error: str, message: str, hint: str,
               details: list[dict[str, Any]] | None = None) -> dict[str, object]:
    body = ErrorOut(error=error, message=message, hint=hint, details=details)
    return body.model_dump(exclude_none=True)


def describe(exc: Exception) -> tuple[int, dict[str, object]]:
    """Status and body for any error (used by the handlers below and by streamed answers)."""
    if isinstance(exc, RagError):
        return rag_status(exc), error_body(type(exc).__name__, exc.message, exc.hint)
    if isinstance(exc, ValidationException):
        details = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
        return 400, error_body("InvalidRequest", str(exc.detail),
                               "Fix the fields listed in `details`.", details=details)
    if isinstance(exc, HTTPException) and isinstance(exc.__cause__, SerializationException):
        return 400, error_body("MalformedJSON", f"The body is not valid JSON: {exc.detail}.",
                               "Send a JSON object, e.g. {\"question\": \"...\"} (see /schema).")
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):  # msgspec, body too deep
        return 400, error_body("MalformedJSON", "The JSON body nests too deeply to be read.",
                               "Send a flat JSON object, e.g. {\"question\": \"...\"}.")
    if isinstance(exc, HTTPException):
        fallback = (HTTPStatus(exc.status_code).phrase.replace(" ", ""), "")
        name, hint = HTTP_ERRORS.get(exc.status_code, fallback)
        return exc.status_code, error_body(name, str(exc.detail), hint)
    return 500, error_body("InternalError", "The server failed to handle this request.",
                           "Retry later; if it keeps failing, check the server log.")


# OpenAPI: each status a route can return, what it means there, and an error raised for it.
ErrorCases = Mapping[int, tuple[str, Exception]]


def error_responses(cases: ErrorCases) -> dict[int, ResponseSpec]:
    """The `responses` of a route for its error `cases`: one schema (`ErrorOut`) for all, each
    with the body `describe` makes of the case's error as its example."""
    specs = {}
    for status, (description, exc) in sorted(cases.items()):
        got, body = describe(exc)
        if got != status:
            raise ValueError(f"{type(exc).__name__} maps to {got}, not {status}")
        example = Example(summary=str(body["message"]), value=body)
        specs[status] = ResponseSpec(ErrorOut, description=description, generate_examples=False,
                                     examples=[example])
    return specs


def api_errors(scope: str, cases: ErrorCases) -> dict[int, ResponseSpec]:
    """`error_responses` of a /v1 route needing `scope`: `cases` plus what every /v1 route can
    answer (no or bad key, wrong scope, rate limit, not ready)."""
    common: dict[int, tuple[str, Exception]] = {
        400: ("A parameter or body field of the wrong type or out of range, or unknown "
              "fields; `details` lists them.",
              ValidationException("Validation failed for GET /v1/documents?limit=0", extra=[
                  {"message": "Expected `int` >= 1", "key": "limit", "source": "query"}])),
        401: ("No API key, or one that is not valid (when keys are configured).",
              NotAuthorizedException("No API key was sent.")),
        403: (f"The key lacks the `{scope}` scope.",
              PermissionDeniedException(f"This key lacks the {scope} scope.")),
        429: ("Too many requests for this key (or address); see Retry-After.",
              TooManyRequestsException("Too Many Requests")),
        503: ("Models or index not loaded yet, a dependency is down (see /ready), or the "
              "generator's queue is full (Overloaded, with Retry-After).",
              NotReady("The service is not ready: loading models and index",
                       "Wait until GET /ready answers 200, then retry.")),
    }
    return error_responses({**common, **cases})


def error_headers(exc: Exception) -> dict[str, str]:
    """The headers an error's response carries: an HTTP error's own, and Retry-After wherever
    the client should wait (rate limited, busy, a dependency away)."""
    if isinstance(exc, RagError):
        return {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    if not isinstance(exc, HTTPException):
        return {}
    headers = dict(exc.headers or {})
    if exc.status_code == 429 and "Retry-After" not in headers:
        # Litestar's rate limiter says when the window resets; clients read Retry-After.
        headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "60"))))
    return headers


def log_error(exc: Exception, status: int) -> None:
    """Log what is the server's fault (not 503: being busy or loading is expected)."""
    if isinstance(exc, RagError):
        if status >= 500 and status != 503:
            log.error("engine error: %s", exc)
    elif not isinstance(exc, HTTPException) and status >= 500:
        log.exception("unhandled error", exc_info=exc)


Shape = Callable[[Exception], tuple[int, Mapping[str, Any]]]


def error_handler(shape: Shape) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    """An exception handler answering any error as `shape` makes its status and body, with
    `error_headers` and `log_error`: `describe` here, OpenAI's format on its routes."""

    def handle(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        status, body = shape(exc)
        log_error(exc, status)
        return Response(body, status_code=status, media_type=MediaType.JSON,
                        headers=error_headers(exc))

    return handle


def handlers(shape: Shape) -> ExceptionHandlersMap:
    """Every error a route can raise, answered by `error_handler(shape)`."""
    handle = error_handler(shape)
    return {RagError: handle, ValidationException: handle, HTTPException: handle,
            Exception: handle}


EXCEPTION_HANDLERS = handlers(describe)

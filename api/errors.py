"""The one place where errors become HTTP responses (and the bodies of streamed `error` events)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from rag.errors import Overloaded, RagError

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


def error_body(error: str, message: str, hint: str, **extra: object) -> dict[str, object]:
    return {"error": error, "message": message, "hint": hint, **extra}


def describe(exc: Exception) -> tuple[int, dict[str, object]]:
    """Status and body for any error (used by the handlers below and by streamed answers)."""
    if isinstance(exc, RagError):
        return exc.status, error_body(type(exc).__name__, exc.message, exc.hint)
    if isinstance(exc, ValidationException):
        return 400, error_body("InvalidRequest", str(exc.detail),
                               "Fix the fields listed in `details`.", details=exc.extra or [])
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


def _respond(exc: Exception, headers: dict[str, str] | None = None) -> Response[object]:
    status, body = describe(exc)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def rag_error_handler(_: Request[Any, Any, Any], exc: RagError) -> Response[object]:
    if exc.status >= 500 and exc.status != 503:
        log.error("engine error: %s", exc)
    if isinstance(exc, Overloaded):
        return _respond(exc, {"Retry-After": str(exc.retry_after_s)})
    return _respond(exc)


def validation_handler(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[object]:
    return _respond(exc)


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[object]:
    headers = dict(exc.headers or {})
    if exc.status_code == 429 and "Retry-After" not in headers:
        # Litestar's rate limiter says when the window resets; clients read Retry-After.
        headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "60"))))
    return _respond(exc, headers)


def internal_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    status, _body = describe(exc)
    if status >= 500:
        log.exception("unhandled error", exc_info=exc)
    return _respond(exc)


EXCEPTION_HANDLERS = {
    RagError: rag_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}

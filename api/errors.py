"""The one place where engine errors become HTTP responses."""

from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from rag.errors import RagError

log = logging.getLogger(__name__)

HINTS = {
    400: "Fix the request as described and send it again.",
    401: "Send a valid key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    403: "Use a key that has the needed scope.",
    404: "Check the id or path.",
    405: "Use one of the methods this route allows (see /schema).",
    413: "Send less data.",
    415: "Send a supported content type (see /schema).",
    429: "Wait for the time given in Retry-After, then retry.",
}


def error_body(error: str, message: str, hint: str, **extra: object) -> dict[str, object]:
    return {"error": error, "message": message, "hint": hint, **extra}


def rag_error_handler(_: Request[object, object, object], exc: RagError) -> Response[object]:
    if exc.status >= 500 and exc.status != 503:
        log.error("engine error: %s", exc)
    return Response(
        error_body(type(exc).__name__, exc.message, exc.hint),
        status_code=exc.status,
        media_type=MediaType.JSON,
    )


def validation_handler(
    _: Request[object, object, object], exc: ValidationException
) -> Response[object]:
    return Response(
        error_body("InvalidRequest", str(exc.detail), "Fix the fields listed in `details`.",
                   details=exc.extra or []),
        status_code=400,
        media_type=MediaType.JSON,
    )


def http_error_handler(_: Request[object, object, object], exc: HTTPException) -> Response[object]:
    headers = dict(exc.headers or {})
    return Response(
        error_body(type(exc).__name__, str(exc.detail), HINTS.get(exc.status_code, "")),
        status_code=exc.status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def internal_error_handler(_: Request[object, object, object], exc: Exception) -> Response[object]:
    log.exception("unhandled error", exc_info=exc)
    return Response(
        error_body("InternalError", "The server failed to handle this request.",
                   "Retry later; if it keeps failing, check the server log."),
        status_code=500,
        media_type=MediaType.JSON,
    )


EXCEPTION_HANDLERS = {
    RagError: rag_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}

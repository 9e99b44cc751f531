"""Errors on the OpenAI routes (/v1/chat/completions, /v1/models): the status `api.errors`
gives every error (`describe`), with the body reshaped into OpenAI's error format
(`OpenAIErrorOut`), and the exception handlers of those routes.
"""

from __future__ import annotations

from typing import Any

from litestar.exceptions import ValidationException

from api.errors import describe, handlers

# OpenAI's error `type` by status; other 5xx are server_error, other 4xx invalid_request_error.
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


def openai_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """Status and OpenAI-shaped body of any error (422 is 400 here, as OpenAI answers)."""
    status, body = describe(exc)
    status = 400 if status == 422 else status
    message = " ".join(str(body[k]) for k in ("message", "hint") if body.get(k))
    details = body.get("details")
    param = None
    if isinstance(details, list) and details and isinstance(details[0], dict):
        param = details[0].get("param") or details[0].get("key")
    code = "invalid_api_key" if status == 401 else str(body["error"])
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": message, "type": kind,
                              "param": None if param is None else str(param), "code": code}}


def invalid(message: str, param: str) -> ValidationException:
    """A 400 for the request field `param` (OpenAI's error names it in `param`)."""
    return ValidationException(detail=message, extra=[{"param": param}])


OPENAI_EXCEPTION_HANDLERS = handlers(openai_error)  # the same statuses, OpenAI's body

"""The error family of the engine: what went wrong (`message`), what to do (`hint`) and, for a
busy or absent dependency, when to retry (`retry_after_s`).

No HTTP here: `api/errors.py` is the one place that maps each kind (along its class hierarchy)
to an HTTP status and response.
"""

from __future__ import annotations


class RagError(Exception):
    """Base error: `message` says what was wrong, `hint` what to do about it."""

    retry_after_s: int | None = None  # set: the client may retry after this many seconds

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


LOADING_HINT = "Wait until the service reports ready, then retry."


class InvalidInput(RagError):
    """The request or file is malformed or out of range."""


class InvalidFilter(InvalidInput):
    """A filter of an ask is malformed: an unknown operator, or a value of the wrong type."""


class SlowRequest(RagError):
    """The client stopped sending the request body."""


class NotFound(RagError):
    """No such document, job, conversation or other record."""


class TooLarge(RagError):
    """A file, body or question is over its size limit."""


class UnsupportedType(RagError):
    """A file of a kind the engine cannot read."""


class EmptyDocument(InvalidInput):
    """The file parsed but holds no text (e.g. a scanned PDF without a text layer)."""


class NotReady(RagError):
    """The service cannot answer yet: models or index not loaded, or a dependency is down."""


class RateLimited(RagError):
    """Too many requests from one client in the current window."""


class DiskFull(RagError):
    """The data directory's disk (or quota) is full: nothing was stored."""


class Unauthorized(RagError):
    """No credential, or one that is not valid."""


class Forbidden(RagError):
    """A valid credential that lacks the needed scope."""


class ConfigError(RagError):
    """Settings point at something that does not exist or does not fit together."""


class IndexMismatch(ConfigError):
    """The saved index was built with another embedding model or dimension."""


class Overloaded(RagError):
    """Too much work is queued already; the client should retry after `retry_after_s`."""

    def __init__(self, message: str, hint: str = "", retry_after_s: int = 2) -> None:
        super().__init__(message, hint)
        self.retry_after_s = retry_after_s


class IndexUnreadable(ConfigError):
    """The saved index or its manifest is corrupt or truncated (it can be rebuilt)."""


class StoreUnreadable(ConfigError):
    """A SQLite file of the data directory is not a readable database, or PostgreSQL holds a
    schema newer than this code."""


class StoreUnavailable(NotReady):
    """The database server (PostgreSQL) does not answer; retry after `retry_after_s`."""

    def __init__(self, message: str, hint: str = "", retry_after_s: int = 5) -> None:
        super().__init__(message, hint)
        self.retry_after_s = retry_after_s

"""The error family of the engine. `api/` maps each to one HTTP status in one place."""

from __future__ import annotations


class RagError(Exception):
    """Base error: `message` says what was wrong, `hint` what to do about it."""

    status = 400
    retry_after_s: int | None = None  # set: the client may retry after this many seconds

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InvalidInput(RagError):
    """The request or file is malformed or out of range."""

    status = 422


class SlowRequest(RagError):
    """The client stopped sending the request body."""

    status = 408


class NotFound(RagError):
    status = 404


class TooLarge(RagError):
    status = 413


class UnsupportedType(RagError):
    status = 415


class EmptyDocument(InvalidInput):
    """The file parsed but holds no text (e.g. a scanned PDF without a text layer)."""


class NotReady(RagError):
    """The service cannot answer yet: models or index not loaded, or a dependency is down."""

    status = 503


class RateLimited(RagError):
    status = 429


class DiskFull(RagError):
    """The data directory's disk (or quota) is full: nothing was stored."""

    status = 507


class Unauthorized(RagError):
    status = 401


class Forbidden(RagError):
    status = 403


class ConfigError(RagError):
    """Settings point at something that does not exist or does not fit together."""

    status = 500


class IndexMismatch(ConfigError):
    """The saved index was built with another embedding model or dimension."""


class Overloaded(RagError):
    """Too much work is queued already; the client should retry after `retry_after_s`."""

    status = 503

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

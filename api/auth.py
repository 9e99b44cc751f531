"""API keys and scopes: who may call which route.

Keys come from `RAG_API_KEYS` (`{"key": ["ask", "ingest", "admin"]}`) and are sent as
`Authorization: Bearer <key>` or `X-API-Key: <key>`. `admin` grants every scope. With no keys
configured the service is open, which `check_open_access` allows only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from rag.access import ALL_TENANTS, DEFAULT_TENANT, EVERYONE, Reader
from rag.errors import ConfigError
from rag.settings import Settings

log = logging.getLogger(__name__)

Scope = Literal["ask", "ingest", "admin"]
KeyTable = Mapping[str, Sequence[str]]


def presented_key(headers: Headers) -> str | None:
    """The key a request carries (`Authorization: Bearer` first, then `X-API-Key`), if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def scopes_of(keys: KeyTable, presented: str) -> frozenset[str] | None:
    """The scopes of `presented`, or None if it is no configured key.

    Every configured key is compared in constant time, as digests of equal length, so timing
    says nothing about which key matched, how much of one, or how long keys are.
    """
    found: frozenset[str] | None = None
    candidate = hashlib.sha256(presented.encode()).digest()
    for key, scopes in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), candidate):
            found = frozenset(scopes)
    return found


def key_id(key: str) -> str:
    """A short, stable, non-reversible name for a key (for rate-limit buckets and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def owner_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Whose conversations a request sees: its key's id ("" in open mode or without a key)."""
    settings: Settings = connection.app.state["settings"]
    key = presented_key(connection.headers)
    return key_id(key) if settings.api_keys and key else ""


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its key's id (whose conversations and answers are its own), the
    tenant its uploads belong to, what it may read, and its scopes."""

    owner: str
    tenant: str
    reader: Reader
    scopes: frozenset[str]

    @property
    def operator(self) -> bool:
        """Whether it manages every tenant (tenant `*`, or open mode)."""
        return self.reader.everything

    @property
    def upload_tenant(self) -> str:
        """The tenant its uploads belong to (the operator's: `default`)."""
        return DEFAULT_TENANT if self.tenant == ALL_TENANTS else self.tenant


OPEN_CALLER = Caller("", DEFAULT_TENANT, EVERYONE, frozenset({"ask", "ingest", "admin"}))


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The request's caller. Guards have already refused a missing or unknown key, so a route
    behind `require_scope` always gets its key's caller (open mode: everyone's)."""
    settings: Settings = connection.app.state["settings"]
    key = presented_key(connection.headers)
    if not settings.api_keys or key is None:
        return OPEN_CALLER if not settings.api_keys else Caller(
            "", DEFAULT_TENANT, Reader(DEFAULT_TENANT), frozenset())
    scopes = scopes_of(settings.api_keys, key) or frozenset()
    tenant = DEFAULT_TENANT
    return Caller(key_id(key), tenant, Reader(tenant, frozenset(), "admin" in scopes), scopes)


def has_scope(connection: ASGIConnection[Any, Any, Any, Any], *scopes: Scope) -> bool:
    """Whether the request carries a configured key with any of `scopes` (or `admin`)."""
    settings: Settings = connection.app.state["settings"]
    key = presented_key(connection.headers)
    granted = scopes_of(settings.api_keys, key) if key is not None else None
    return bool(granted and granted & (frozenset(scopes) | {"admin"}))


def require_scope(*scopes: Scope) -> Guard:
    """A guard that lets a request through when its key has any of `scopes` (or `admin`).

    Use it on a route: `@post(..., guards=[require_scope("ingest")])`. In open mode (no keys
    configured, loopback only) every request passes.
    """
    wanted = frozenset(scopes) | {"admin"}
    needed = " or ".join(scopes)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        settings: Settings = connection.app.state["settings"]
        if not settings.api_keys:
            return
        key = presented_key(connection.headers)
        if key is None:
            raise NotAuthorizedException(
                "No API key was sent.", headers={"WWW-Authenticate": "Bearer"}
            )
        granted = scopes_of(settings.api_keys, key)
        if granted is None:
            raise NotAuthorizedException(
                "The API key is not valid.", headers={"WWW-Authenticate": "Bearer"}
            )
        if not granted & wanted:
            raise PermissionDeniedException(f"This key lacks the {needed} scope.")

    return guard


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_open_access(settings: Settings) -> None:
    """Refuse to serve without keys beyond localhost; say at start how access is controlled."""
    if settings.api_keys:
        log.info("API keys: %d configured; every /v1 route needs one", len(settings.api_keys))
        _check_widget_key(settings)
        return
    if not is_loopback(settings.host):
        raise ConfigError(
            f"No API keys are configured and the service would listen on {settings.host}: "
            "it refuses to run open to other machines.",
            'Set RAG_API_KEYS (e.g. {"<a long random key>": ["ask", "ingest"]}), '
            "or bind to 127.0.0.1 (RAG_HOST).",
        )
    log.warning("No API keys configured: the API is open to anyone on this machine (bound to %s)",
                settings.host)


def _check_widget_key(settings: Settings) -> None:
    if not settings.widget_key:
        return
    scopes = scopes_of(settings.api_keys, settings.widget_key)
    if scopes is None or scopes != {"ask"}:
        raise ConfigError(
            "RAG_WIDGET_KEY must be one of RAG_API_KEYS with the `ask` scope only: "
            "the demo page shows it to everyone.",
            "Add an ask-only key to RAG_API_KEYS and use it, or leave RAG_WIDGET_KEY empty.",
        )

"""API keys and scopes: who may call which route, as whom.

Keys come from `RAG_API_KEYS` and `RAG_API_KEYS_FILE` (parsed once at start by `api.keys` into
a table of hashes, `app.state["keys"]`) and are sent as `Authorization: Bearer <key>` or
`X-API-Key: <key>`. `admin` grants every scope. Each key has a tenant and groups, which make the
request's `Caller`. With no keys configured the service is open, which `check_open_access`
allows only on a loopback address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from api.keys import KeySpec, KeyTable, load_keys, short_keys
from rag.access import ALL_TENANTS, DEFAULT_TENANT, EVERYONE, Reader
from rag.errors import ConfigError
from rag.settings import Settings

log = logging.getLogger(__name__)

Scope = Literal["ask", "ingest", "admin"]


def presented_key(headers: Headers) -> str | None:
    """The key a request carries (`Authorization: Bearer` first, then `X-API-Key`), if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def keys_of(connection: ASGIConnection[Any, Any, Any, Any]) -> KeyTable:
    """The app's key table (`create_app` puts it in `app.state["keys"]`; an app built without
    it gets its settings' table, made once)."""
    state = connection.app.state
    keys: KeyTable | None = state.get("keys")
    if keys is None:
        keys = state["keys"] = load_keys(state["settings"])
    return keys


def keys_on(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether keys are configured (from the environment or the key file): not open mode."""
    return bool(keys_of(connection))


def spec_of(connection: ASGIConnection[Any, Any, Any, Any]) -> KeySpec | None:
    """The spec of the key the request carries, or None (no key, or no configured one).
    Looked up once per request (the limiter, the guard and the route all ask): the lookup
    hashes the key and compares it with every configured one."""
    state = connection.state
    if SPEC not in state:
        key = presented_key(connection.headers)
        state[SPEC] = keys_of(connection).find(key) if key is not None else None
    spec: KeySpec | None = state[SPEC]
    return spec


SPEC = "rag_key_spec"  # where a request keeps its key's spec


def key_id(key: str) -> str:
    """A short, stable, non-reversible name for a key (for rate-limit buckets and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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


NOBODY = Reader("")  # no document has the empty tenant


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The request's caller: its key's id, tenant, groups and scopes. Guards have already
    refused a missing or unknown key, so a route behind `require_scope` always gets its key's
    caller (open mode: everyone's); without a valid key it has no scopes and reads nothing
    (a source view opened by its token checks the token instead)."""
    if not keys_on(connection):
        return OPEN_CALLER
    key, spec = presented_key(connection.headers), spec_of(connection)
    if key is None or spec is None:
        return Caller("", DEFAULT_TENANT, NOBODY, frozenset())
    return Caller(key_id(key), spec.tenant, spec.reader, spec.scopes)


def reader_of(request: Request[Any, Any, Any]) -> Reader:
    """What the request's key may read (open mode: everything): a route's `reader` (Litestar
    injects it by the parameter's name, `request`)."""
    return caller_of(request).reader


READER = {"reader": Provide(reader_of, sync_to_thread=False)}  # routes' dependencies=READER


def known_groups(connection: ASGIConnection[Any, Any, Any, Any], tenant: str) -> frozenset[str]:
    """The groups some configured key of `tenant` holds: a document's `access` naming another
    group is readable by the tenant's admin keys (and the operator's) only."""
    return keys_of(connection).groups_of(tenant)


def has_scope(connection: ASGIConnection[Any, Any, Any, Any], *scopes: Scope) -> bool:
    """Whether the request carries a configured key with any of `scopes` (or `admin`)."""
    spec = spec_of(connection)
    return spec is not None and bool(spec.scopes & (frozenset(scopes) | {"admin"}))


def require_scope(*scopes: Scope) -> Guard:
    """A guard that lets a request through when its key has any of `scopes` (or `admin`).

    Use it on a route: `@post(..., guards=[require_scope("ingest")])`. In open mode (no keys
    configured, loopback only) every request passes.
    """
    wanted = frozenset(scopes) | {"admin"}
    needed = " or ".join(scopes)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not keys_on(connection):
            return
        if presented_key(connection.headers) is None:
            raise NotAuthorizedException(
                "No API key was sent.", headers={"WWW-Authenticate": "Bearer"}
            )
        spec = spec_of(connection)
        if spec is None:
            raise NotAuthorizedException(
                "The API key is not valid.", headers={"WWW-Authenticate": "Bearer"}
            )
        if not spec.scopes & wanted:
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


def check_open_access(settings: Settings) -> KeyTable:
    """The key table of `settings`, checked: refuse malformed keys, and serving without keys
    beyond localhost; say at start how access is controlled (never a key or its hash)."""
    keys = load_keys(settings)
    if keys:
        log.info("API keys: %d configured (tenants: %s); every /v1 route needs one",
                 len(keys), ", ".join(keys.tenants()))
        _check_secrets(settings)
        _check_widget_key(settings, keys)
        return keys
    if not is_loopback(settings.host):
        raise ConfigError(
            f"No API keys are configured and the service would listen on {settings.host}: "
            "it refuses to run open to other machines.",
            'Set RAG_API_KEYS (e.g. {"<a long random key>": ["ask", "ingest"]}) or '
            "RAG_API_KEYS_FILE (`rag keys new`), or bind to 127.0.0.1 (RAG_HOST).",
        )
    log.warning("No API keys configured: the API is open to anyone on this machine (bound to %s)",
                settings.host)
    return keys


def _check_secrets(settings: Settings) -> None:
    """Warn of short keys; refuse view URLs anyone holding the key file could sign."""
    short = short_keys(settings.api_keys)
    if short:
        log.warning("RAG_API_KEYS entries %s are short keys, easier to guess: make long random "
                    "ones with `rag keys new`", ", ".join(map(str, short)))
    if not settings.api_keys and not settings.view_secret:
        raise ConfigError(
            "With keys from RAG_API_KEYS_FILE alone, view URLs would be signed with a secret "
            "derived from the file's hashes: anyone who can read the file could make them.",
            "Set RAG_VIEW_SECRET to a long random value (the same in every process).")


def _check_widget_key(settings: Settings, keys: KeyTable) -> None:
    if not settings.widget_key:
        return
    spec = keys.find(settings.widget_key)
    if spec is None or spec.scopes != {"ask"} or spec.tenant == ALL_TENANTS:
        raise ConfigError(
            "RAG_WIDGET_KEY must be one of the configured keys with the `ask` scope only, of a "
            "tenant (not the operator's `*`): the demo page shows it to everyone.",
            "Add an ask-only key to RAG_API_KEYS and use it, or leave RAG_WIDGET_KEY empty.",
        )

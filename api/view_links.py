"""Signed view URLs (`ViewLinks`): the links of citations and quotes to the source view, and the
token that opens one document's view without a key header.

With keys on, a view URL carries `token=<expiry>.<signature>`: HMAC-SHA256, over the document id
and the expiry, with RAG_VIEW_SECRET or, when that is empty, a secret derived from the configured
keys (RAG_API_KEYS and the hashes, tenants and groups of RAG_API_KEYS_FILE: every process with
the same keys accepts it). It opens that one document, in a new tab with
no key header, until it expires. Without keys (open mode, loopback only) URLs carry no token.
Tokens are kept out of the access log (`RedactTokens`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from urllib.parse import quote, urlencode

from api.keys import KeyTable, load_keys
from rag.errors import Forbidden
from rag.settings import Settings

_TOKEN = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{43}")
_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"']*")
SECRET_LABEL = b"rag view links v1"
TOKEN_HINT = "Open the citation of a fresh answer (its view_url), or send a key with the ask scope."


class ViewLinks:
    """Makes and checks the signed view URLs of one configuration."""

    def __init__(self, settings: Settings, keys: KeyTable | None = None) -> None:
        keys = load_keys(settings) if keys is None else keys  # `create_app` passes its table
        self.signed = bool(keys)
        self.ttl_s = settings.view_token_s
        if settings.view_secret:
            self._secret = settings.view_secret.encode()
        else:  # the same for every process with the same keys
            self._secret = hmac.new(keys.seed, SECRET_LABEL, hashlib.sha256).digest()

    def sign(self, doc_id: str, expires: int) -> str:
        """The token that opens `doc_id` until `expires` (Unix seconds)."""
        message = f"view\n{doc_id}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return f"{expires}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"

    def token(self, doc_id: str) -> str | None:
        """A fresh token for `doc_id`, valid for RAG_VIEW_TOKEN_S; None in open mode."""
        return self.sign(doc_id, int(time.time()) + self.ttl_s) if self.signed else None

    def check(self, token: str, doc_id: str) -> None:
        """Forbidden unless `token` was signed here for `doc_id` and has not expired."""
        given = token.encode("utf-8", "replace")
        expires = int(token.partition(".")[0]) if _TOKEN.fullmatch(token) else 0
        if not hmac.compare_digest(self.sign(doc_id, expires).encode(), given):
            raise Forbidden("The view link's token is not valid for this document.",
                            TOKEN_HINT)
        if expires < time.time():
            raise Forbidden("The view link has expired.", TOKEN_HINT)

    def opens(self, token: str | None, doc_id: str) -> bool:
        """Whether `token` is a valid, unexpired token for `doc_id`."""
        if not token or not self.signed:
            return False
        try:
            self.check(token, doc_id)
        except Forbidden:
            return False
        return True

    def view_url(self, doc_id: str, start: int, end: int, page: int | None) -> str:
        """Where the quote [start, end) of `doc_id` is shown in its source (relative to the
        API's address)."""
        query: dict[str, object] = {"start": start, "end": end}
        if page is not None:
            query["page"] = page
        return self._url(f"{_path(doc_id)}/view", query, self.token(doc_id))

    def page_url(self, doc_id: str, page: int) -> str:
        """Page `page` of a PDF document as PNG, with a fresh token."""
        return self._url(f"{_path(doc_id)}/pages/{page}", {}, self.token(doc_id))

    @staticmethod
    def _url(path: str, query: dict[str, object], token: str | None) -> str:
        if token is not None:
            query = {**query, "token": token}
        return f"{path}?{urlencode(query)}" if query else path


def _path(doc_id: str) -> str:
    return f"/v1/documents/{quote(doc_id, safe='')}"


def redact_tokens(text: str) -> str:
    """`text` with the value of every `token=` query parameter replaced by `[redacted]`."""
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text) if "token=" in text else text


class RedactTokens(logging.Filter):
    """Keeps view tokens out of a log (uvicorn's access log writes each request's path and
    query): the message and its string arguments are redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a
                                for a in record.args)
        return True

"""The source view's links and page: signed view URLs (`ViewLinks`) and the HTML that shows a
quote in its source (`view_page`).

With keys on, a view URL carries `token=<expiry>.<signature>`: HMAC-SHA256, over the document id
and the expiry, with RAG_VIEW_SECRET or, when that is empty, a secret derived from RAG_API_KEYS
(so every process with the same keys accepts it). It opens that one document, in a new tab with
no key header, until it expires. Without keys (open mode, loopback only) URLs carry no token.

Everything a document brings (its name, its text) is escaped: the page shows it, never runs it.
The page runs one script of its own (scroll the quote into view), allowed by its hash alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from html import escape
from pathlib import Path
from urllib.parse import quote, urlencode

from rag.documents.pages import Box
from rag.documents.sources import Passage
from rag.errors import Forbidden
from rag.settings import Settings

STATIC = Path(__file__).parent / "static"
STYLE = (STATIC / "view.css").read_text(encoding="utf-8")
SCRIPT = 'document.getElementById("quote").scrollIntoView({block: "center"});'
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
# The page loads nothing but its page image; its only script is the one above.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the URL holds a token
    "Cache-Control": "private, no-store",
}
_TOKEN = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{43}")
CSS_PX_PER_POINT = 96 / 72
TOKEN_HINT = "Open the citation of a fresh answer (its view_url), or send a key with the ask scope."


class ViewLinks:
    """Makes and checks the signed view URLs of one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.signed = bool(settings.api_keys)
        self.ttl_s = settings.view_token_s
        if settings.view_secret:
            self._secret = settings.view_secret.encode()
        else:  # the same for every process with the same keys
            keys = "\n".join(sorted(settings.api_keys)).encode()
            self._secret = hmac.new(b"rag view links", keys, hashlib.sha256).digest()

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


def view_page(passage: Passage, image_url: str | None) -> str:
    """The HTML page of a passage: for a PDF its page (`image_url`) with the quote's boxes
    over it, then the text around the quote with the quote in `<mark>`. The first mark shown
    has the id `quote` and is scrolled into view."""
    doc, on_page = passage.document, passage.on_page
    where = f"characters {passage.start}\u2013{passage.end}"
    if passage.page is not None:
        pages = f" of {on_page.pages}" if on_page else ""
        where = f"page {passage.page}{pages}, {where}"
    figure, note = "", ""
    if on_page is not None and image_url is not None:
        figure = _figure(image_url, on_page.width, on_page.height, on_page.boxes,
                         f"Page {passage.page} of {doc.filename}")
        if not on_page.boxes:
            note = ("This page has no text layer (its text was read from the image), so the "
                    "quote is marked in the text below." if not on_page.has_text else
                    "The quote could not be placed on the page image; it is marked in the "
                    "text below.")
    text_id = "quote" if not (on_page and on_page.boxes) else "quote-text"
    more = '<span class="more">\u2026</span>'
    source = (f'{more if passage.more_before else ""}{escape(passage.before)}'
              f'<mark id="{text_id}">{escape(passage.quote)}</mark>'
              f'{escape(passage.after)}{more if passage.more_after else ""}')
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(doc.filename)}: the quote in its source</title>"
        f"<style>{STYLE}</style></head><body>"
        f'<header><h1>{escape(doc.filename)}</h1><p class="where">{where}</p></header><main>'
        f"{figure}"
        f'<section class="text" aria-label="The quote in its text">'
        f'{f"<p class=note>{note}</p>" if note else ""}'
        f'<h2>The text around the quote</h2><div class="source">{source}</div></section>'
        f"</main><script>{SCRIPT}</script></body></html>"
    )


def _figure(image_url: str, width: float, height: float, boxes: tuple[Box, ...],
            label: str) -> str:
    """The page image at its size in CSS pixels (so the layout holds before it loads), with
    a `<mark>` box over each line of the quote."""
    w, h = round(width * CSS_PX_PER_POINT), round(height * CSS_PX_PER_POINT)
    marks = "".join(
        f'<mark class="box"{" id=quote" if n == 0 else ""} aria-hidden="true" '
        f'style="left:{b.left:.4%};top:{b.top:.4%};width:{b.width:.4%};height:{b.height:.4%}">'
        "</mark>" for n, b in enumerate(boxes))
    return (f'<figure class="page" style="max-width:{w}px">'
            f'<img src="{escape(image_url)}" width="{w}" height="{h}" alt="{escape(label)}">'
            f"{marks}</figure>")

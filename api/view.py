"""The source view's page: the HTML that shows a quote in its source (`view_page`). Its links
are signed in `api.view_links`.

Everything a document brings (its name, its text) is escaped: the page shows it, never runs it.
The page runs one script of its own (scroll the quote into view), allowed by its hash alone.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path

from rag.documents.pages import Box
from rag.documents.sources import PDF, Passage

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
CSS_PX_PER_POINT = 96 / 72


def view_page(passage: Passage, image_url: str | None) -> str:
    """The HTML page of a passage: for a PDF its page (`image_url`) with the quote's boxes
    over it, then the text around the quote with the quote in `<mark>`. The first mark shown
    has the id `quote` and is scrolled into view."""
    doc, on_page = passage.document, passage.on_page
    where = f"characters {passage.start}\u2013{passage.end}"
    if passage.page is not None:
        pages = f" of {on_page.pages}" if on_page else ""
        where = f"page {passage.page}{pages}, {where}"
    figure, note = "", _note(passage)
    if on_page is not None and image_url is not None:
        figure = _figure(image_url, on_page.width, on_page.height, on_page.boxes,
                         f"Page {passage.page} of {doc.filename}")
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


def _note(passage: Passage) -> str:
    """Why a PDF's quote is marked in the text only, where it is ("" otherwise)."""
    on_page = passage.on_page
    if passage.document.content_type != PDF or passage.page is None:
        return ""
    if on_page is None:
        return ("The page image is not available (the uploaded file is missing or cannot be "
                "read), so the quote is marked in the text below.")
    if on_page.boxes:
        return ""
    if not on_page.has_text:
        return ("This page has no text layer (its text was read from the image), so the "
                "quote is marked in the text below.")
    return "The quote could not be placed on the page image; it is marked in the text below."


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

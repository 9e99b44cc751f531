"""PDF pages as they look: rendered to PNG with pypdfium2, and where a quote stands on a page.

A quote's place on its page comes from pdfium's text page: the page's characters and the
quote are both folded (NFKC, case-folded, letters and digits only, so line breaks, hyphens at
line ends and ligatures do not matter), the quote is found in the page, and pdfium gives the
rectangles (one per line) of the characters it covers. A quote that runs onto the next page is
marked as far as this page holds it (its start where the page ends, or its end where it begins);
a piece of a quote found anywhere else marks nothing. A page without a text layer (a scan, read
with OCR) has no characters: it gets no boxes and the caller shows the marked text beside the
image instead.
PDFs are opened under pdfium's process-wide lock (`rag.documents.pdfium`).
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.documents.pdfium import pdf_document
from rag.errors import NotFound

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument, PdfPage, PdfTextPage

RENDER_SCALE = 2.0  # 144 dpi: sharp on a high-density screen, ~1224 px wide for A4/Letter
MAX_RENDER_PIXELS = 8_000_000  # a larger page is rendered at a smaller scale
MIN_MATCH = 12  # folded characters a partial match (start or end of a quote) needs
# A quote's start marked alone must end this near the page's end (folded characters: room for a
# footer or page number), its end alone begin this near the page's start (room for a header).
EDGE_CHARS = 60


@dataclass(frozen=True)
class Box:
    """A rectangle on a page, as fractions of its width and height from its top-left corner."""

    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class PageQuote:
    """Where a quote stands on one page of a PDF, and the page's size in points."""

    page: int
    pages: int
    width: float
    height: float
    boxes: tuple[Box, ...]
    has_text: bool  # False: the page has no text layer (a scan), so no boxes can be found


def _page(document: PdfDocument, number: int) -> PdfPage:
    """Page `number` (from 1), or NotFound naming how many there are."""
    count = len(document)
    if not 1 <= number <= count:
        raise NotFound(f"The document has no page {number}; it has {count}.",
                       f"Ask for a page from 1 to {count}.")
    return document[number - 1]


def render_page(path: Path, number: int, scale: float = RENDER_SCALE) -> bytes:
    """Page `number` of the PDF at `path` as PNG bytes (at most MAX_RENDER_PIXELS pixels)."""
    with pdf_document(path) as document:
        page = _page(document, number)
        width, height = page.get_size()
        image = page.render(scale=render_scale(width, height, scale)).to_pil()
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def render_scale(width: float, height: float, scale: float = RENDER_SCALE) -> float:
    """`scale`, or less for a page (`width` x `height` points) that would be rendered larger
    than MAX_RENDER_PIXELS (pdfium rounds each side up to a whole pixel)."""
    scale = min(scale, math.sqrt(MAX_RENDER_PIXELS / max(width * height, 1.0)))
    while math.ceil(width * scale) * math.ceil(height * scale) > MAX_RENDER_PIXELS:
        scale *= 0.999
    return scale


def quote_on_page(path: Path, number: int, quote: str) -> PageQuote:
    """Where `quote` stands on page `number` of the PDF at `path` (no boxes where not found)."""
    with pdf_document(path) as document:
        page = _page(document, number)
        left, bottom, right, top = page.get_bbox()
        width, height = right - left, top - bottom
        text = page.get_textpage()
        chars = _page_chars(text)
        span = find_folded(chars, quote)
        rects = []
        if span is not None and page.get_rotation() == 0:
            first, last = span
            rects = [text.get_rect(i) for i in range(text.count_rects(first, last - first))]
        boxes = tuple(Box(left=(x0 - left) / width, top=(top - y1) / height,
                          width=(x1 - x0) / width, height=(y1 - y0) / height)
                      for x0, y0, x1, y1 in rects if x1 > x0 and y1 > y0)
        return PageQuote(number, len(document), width, height, boxes,
                         has_text=any(c.strip() for c in chars))


def _page_chars(text: PdfTextPage) -> list[str]:
    """The page's characters, one string per pdfium character index."""
    import pypdfium2.raw as pdfium_c

    raw = text.raw
    chars = []
    for i in range(pdfium_c.FPDFText_CountChars(raw)):
        code = pdfium_c.FPDFText_GetUnicode(raw, i)
        chars.append(chr(code) if 0 < code < 0x110000 and not 0xD800 <= code < 0xE000 else "")
    return chars


def fold(pieces: list[str] | str) -> tuple[str, list[int]]:
    """The letters and digits of `pieces` (NFKC, case-folded), and for each the index of the
    piece it came from."""
    folded: list[str] = []
    where: list[int] = []
    for i, piece in enumerate(pieces):
        for c in unicodedata.normalize("NFKC", piece).casefold():
            if c.isalnum():
                folded.append(c)
                where.append(i)
    return "".join(folded), where


def find_folded(chars: list[str], quote: str) -> tuple[int, int] | None:
    """Character indices [first, last) of `quote` among `chars`, matched folded (see `place`);
    None where it is not on them."""
    page, where = fold(chars)
    wanted, _ = fold(quote)
    if not wanted or not page:
        return None
    span = place(page, wanted)
    return None if span is None else (where[span[0]], where[span[1] - 1] + 1)


def place(page: str, wanted: str) -> tuple[int, int] | None:
    """Where the folded quote `wanted` stands in the folded `page`: the whole quote; else its
    start and its end close together (the text between read differently), at most
    `max_span(wanted)` apart; else, for a quote crossing a page break, its start running to
    the page's end or its end beginning at the page's start (each at least MIN_MATCH long).
    None otherwise: a quote is never placed by a piece of it found elsewhere."""
    at = page.find(wanted)
    if at >= 0:
        return at, at + len(wanted)
    size = len(wanted)
    head = _longest(lambda n: page.find(wanted[:n]), size)
    if head is not None:
        n, begin = head
        tail = _longest(lambda m: page.find(wanted[size - m:], begin + n), size - n + 1)
        if tail is not None and tail[1] + tail[0] - begin <= max_span(wanted):
            return begin, tail[1] + tail[0]
    edge = len(page) - EDGE_CHARS
    start = _longest(lambda n: _at_least(page.rfind(wanted[:n]), edge - n), size) or (0, 0)
    end = _longest(lambda n: _at_most(page.find(wanted[size - n:]), EDGE_CHARS), size) or (0, 0)
    spans = [(at, at + n) for n, at in (start, end) if n]
    return max(spans, key=lambda s: s[1] - s[0]) if spans else None


def max_span(wanted: str) -> int:
    """The longest stretch of a page that may be marked for the folded quote `wanted`."""
    return int(1.5 * len(wanted)) + 40


def _at_least(position: int, least: int) -> int:
    return position if position >= max(least, 0) else -1


def _at_most(position: int, most: int) -> int:
    return position if 0 <= position <= most else -1


def _longest(find: Callable[[int], int], size: int) -> tuple[int, int] | None:
    """The largest n in [MIN_MATCH, size) with `find(n) >= 0`, and where it was found; None
    when not even MIN_MATCH is. `find` must hold for every n below one it holds for
    (a shorter start or end of a found one is found too, as near the page's edge)."""
    low, high = MIN_MATCH, size - 1
    best: tuple[int, int] | None = None
    while low <= high:
        middle = (low + high) // 2
        position = find(middle)
        if position >= 0:
            best, low = (middle, position), middle + 1
        else:
            high = middle - 1
    return best

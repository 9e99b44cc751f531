"""PDF pages as they look: rendered to PNG with pypdfium2, and where a quote stands on a page.

A quote's place on its page comes from pdfium's text page: the page's characters and the
quote are both folded (NFKC, case-folded, letters and digits only, so line breaks, hyphens at
line ends and ligatures do not matter), the quote is found in the page, and pdfium gives the
rectangles (one per line) of the characters it covers. A quote that runs onto the next page is
marked as far as this page holds it. A page without a text layer (a scan, read with OCR) has no
characters: it gets no boxes and the caller shows the marked text beside the image instead.
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.documents.ocr import PDFIUM_LOCK
from rag.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument, PdfPage, PdfTextPage

RENDER_SCALE = 2.0  # 144 dpi: sharp on a high-density screen, ~1224 px wide for A4/Letter
MAX_RENDER_PIXELS = 8_000_000  # a larger page is rendered at a smaller scale
MIN_MATCH = 12  # folded characters a partial match (start or end of a quote) needs


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


def _open(path: Path) -> PdfDocument:
    import pypdfium2

    try:
        return pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as exc:
        raise InvalidInput(f"The stored PDF cannot be opened: {exc}.",
                           "Upload the file again.") from exc


def _page(document: PdfDocument, number: int) -> PdfPage:
    """Page `number` (from 1), or NotFound naming how many there are."""
    count = len(document)
    if not 1 <= number <= count:
        raise NotFound(f"The document has no page {number}; it has {count}.",
                       f"Ask for a page from 1 to {count}.")
    return document[number - 1]


def render_page(path: Path, number: int, scale: float = RENDER_SCALE) -> bytes:
    """Page `number` of the PDF at `path` as PNG bytes (at most MAX_RENDER_PIXELS pixels)."""
    with PDFIUM_LOCK:
        document = _open(path)
        try:
            page = _page(document, number)
            width, height = page.get_size()
            scale = min(scale, math.sqrt(MAX_RENDER_PIXELS / max(width * height, 1.0)))
            image = page.render(scale=scale).to_pil()
        finally:
            document.close()
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def quote_on_page(path: Path, number: int, quote: str) -> PageQuote:
    """Where `quote` stands on page `number` of the PDF at `path` (no boxes where not found)."""
    with PDFIUM_LOCK:
        document = _open(path)
        try:
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
        finally:
            document.close()


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
    """Character indices [first, last) of `quote` among `chars`, matched folded: the whole
    quote, else its longest start and longest end found (each at least MIN_MATCH long)."""
    page, where = fold(chars)
    wanted, _ = fold(quote)
    if not wanted or not page:
        return None
    at = page.find(wanted)
    if at >= 0:
        return where[at], where[at + len(wanted) - 1] + 1
    head = _longest(lambda n: page.find(wanted[:n]), len(wanted))
    tail = _longest(lambda n: page.find(wanted[len(wanted) - n:]), len(wanted))
    spans = []
    if head is not None:
        spans.append((head[1], head[1] + head[0]))
    if tail is not None:
        spans.append((tail[1], tail[1] + tail[0]))
    if not spans:
        return None
    if len(spans) == 2 and spans[0][0] < spans[1][1]:  # the start, then the end: all between
        begin, end = spans[0][0], spans[1][1]
    else:
        begin, end = max(spans, key=lambda s: s[1] - s[0])
    return where[begin], where[end - 1] + 1


def _longest(find: Callable[[int], int], size: int) -> tuple[int, int] | None:
    """The largest n in [MIN_MATCH, size) with `find(n) >= 0` (a shorter start or end of a
    found one is found too), and where it was found; None when not even MIN_MATCH is."""
    low, high, best = MIN_MATCH, size - 1, None
    while low <= high:
        middle = (low + high) // 2
        position = find(middle)
        if position >= 0:
            best, low = (middle, position), middle + 1
        else:
            high = middle - 1
    return best

"""The scanned pages of a PDF, found and rendered for OCR (`ocr`).

A page is a scan when images cover most of it and its text layer is short (see `_is_scan`); a
page without images is never read with OCR nor counted toward ocr_max_pages. Scanned pages are
rendered with pypdfium2 at `ocr_dpi` (or their scans' own resolution when lower), the pdfium
lock held a page at a time so page views are not kept waiting behind a whole file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from rag.documents.ocr import WORD, Deadline, check_pixels, check_tesseract, page_paragraphs
from rag.documents.pdfium import PDFIUM_LOCK, pdf_pages
from rag.errors import TooLarge
from rag.settings import Settings

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument, PdfPage

_LEAST_DPI = 150  # a scan of lower resolution is rendered enlarged to this
_MIN_WORD_CHARS = 16  # a page mostly covered by images with less text than this is a scan
_STAMP_WORD_CHARS = 200  # ... and one wholly covered by them with less text than this too
_MOST_COVERED = 0.5  # share of a page images cover for it to be a scan (with little text)
_WHOLLY_COVERED = 0.9  # share of a page images cover for it to be a scan under a stamp


def pages_to_ocr(path: Path, filename: str, settings: Settings) -> frozenset[int]:
    """The 1-based scanned pages (see `_is_scan`); refuses more than ocr_max_pages of them.

    Only pdfium's text extraction and page objects are read here (milliseconds a page, the
    pdfium lock taken page by page), so a PDF of thousands of scans is refused before any page
    is rendered. Pages without images are never read with OCR nor counted.
    """
    found = []
    with pdf_pages(path, filename) as document:
        for index in range(len(document)):
            with PDFIUM_LOCK:
                scanned = _is_scan(document, index)
            if scanned:
                found.append(index + 1)
            if len(found) > settings.ocr_max_pages:
                raise TooLarge(
                    f"{filename} has more than {settings.ocr_max_pages} scanned pages (of "
                    f"{len(document)}); at most {settings.ocr_max_pages} are read with OCR "
                    "(RAG_OCR_MAX_PAGES).",
                    hint="Split the PDF, or raise RAG_OCR_MAX_PAGES.",
                )
    if found:
        check_tesseract(settings)
    return frozenset(found)


def _is_scan(document: PdfDocument, index: int) -> bool:
    """Whether page `index` is a scan: images cover most of it and its text layer is short
    (under _MIN_WORD_CHARS word characters), or they cover all of it and its text is a stamp
    (under _STAMP_WORD_CHARS). Call under PDFIUM_LOCK."""
    page = document[index]
    try:
        covered = _image_cover(page)
        if covered < _MOST_COVERED:
            return False
        textpage = page.get_textpage()
        words = len(WORD.findall(textpage.get_text_bounded()))
        textpage.close()
    finally:
        page.close()  # here, under the lock, not whenever the collector runs
    return words < _MIN_WORD_CHARS or (covered >= _WHOLLY_COVERED and words < _STAMP_WORD_CHARS)


def _image_cover(page: PdfPage) -> float:
    """The share of the page the bounds of its image objects cover (overlaps counted twice,
    at most 1)."""
    import pypdfium2.raw as pdfium_c

    width, height = page.get_size()
    if width <= 0 or height <= 0:
        return 0.0
    area = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        left, bottom, right, top = image.get_bounds()  # points
        wide = min(right, width) - max(left, 0.0)
        high = min(top, height) - max(bottom, 0.0)
        if wide > 0 and high > 0:
            area += wide * high
    return float(min(1.0, area / (width * height)))


class ScannedPages:
    """The pages of a PDF to read with OCR (`numbers`, 1-based) and their reading, one by one,
    within ocr_file_timeout_s for all of them.

    A context manager: the PDF stays open in pdfium while its pages are read (the pdfium lock
    held only while a page is rendered).
    """

    def __init__(self, path: Path, filename: str, settings: Settings) -> None:
        self.path, self.filename, self.settings = path, filename, settings
        self.numbers = pages_to_ocr(path, filename, settings)
        self._stack = contextlib.ExitStack()
        self._document: PdfDocument | None = None
        self._deadline = Deadline(settings)

    def __enter__(self) -> ScannedPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._document = None

    def read(self, number: int) -> list[str]:
        """Render page `number` (see `_render_dpi`) and return the paragraphs Tesseract reads."""
        label = f"page {number} of {self.filename}"
        if self._document is None:
            self._document = self._stack.enter_context(pdf_pages(self.path, self.filename))
        self._deadline.page_timeout(label)  # refused before rendering once time is up
        with PDFIUM_LOCK:
            page = self._document[number - 1]
            try:
                scale = _render_dpi(page, self.settings.ocr_dpi) / 72
                width, height = page.get_size()  # points
                check_pixels(round(width * scale), round(height * scale), label, self.settings)
                bitmap = page.render(scale=scale, grayscale=True)
                image = bitmap.to_pil().copy()  # its own pixels: the bitmap is closed here
                bitmap.close()
            finally:
                page.close()  # here, under the lock, not whenever the collector runs
        return page_paragraphs(image, self.settings, label, self._deadline)


def _render_dpi(page: PdfPage, most: int) -> float:
    """`most` (ocr_dpi), or the resolution of the page's scans when lower (not under
    _LEAST_DPI): enlarging a scan adds no detail, and Tesseract reads its speckle as marks."""
    import pypdfium2.raw as pdfium_c

    native = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        left, bottom, right, top = image.get_bounds()  # points
        pixels_wide, pixels_high = image.get_px_size()
        if right - left > 1 and top - bottom > 1:
            native = max(native, pixels_wide * 72 / (right - left),
                         pixels_high * 72 / (top - bottom))
    return min(most, max(native, _LEAST_DPI)) if native else most

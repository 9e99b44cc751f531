"""pdfium (pypdfium2) for the whole process: one lock, since pdfium is not thread-safe, and
PDFs opened and closed under it.

Every use of pdfium in this process (OCR renders, the source view's pages and quote boxes)
holds `PDFIUM_LOCK`. A request that cannot get it within LOCK_WAIT_S is refused as busy
(`Overloaded`: 503 with Retry-After) rather than queued without bound behind a long render.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import InvalidInput, Overloaded

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument

# pdfium is not thread-safe: every use of it in this process (OCR renders, page views) holds this.
PDFIUM_LOCK = threading.Lock()
LOCK_WAIT_S = 10.0  # how long a page view waits for pdfium before it is refused as busy
RETRY_AFTER_S = 2


@contextmanager
def pdf_document(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[PdfDocument]:
    """The PDF at `path` open in pdfium, with PDFIUM_LOCK held until it is closed again.

    Overloaded when the lock is not free within `wait_s` seconds; InvalidInput when pdfium
    cannot open or read the file (not a PDF, damaged, encrypted).
    """
    import pypdfium2

    if not PDFIUM_LOCK.acquire(timeout=wait_s):
        raise Overloaded(f"PDF pages are busy being read (waited {wait_s:g} s for pdfium).",
                         "Retry in a few seconds.", retry_after_s=RETRY_AFTER_S)
    try:
        document = _open(path, "The stored PDF cannot be opened", "Upload the file again.")
        try:
            yield document
        except pypdfium2.PdfiumError as exc:  # a damaged page
            raise InvalidInput(f"The stored PDF cannot be read: {exc}.",
                               "Upload the file again.") from exc
        finally:
            document.close()
    finally:
        PDFIUM_LOCK.release()


@contextmanager
def pdf_pages(path: Path, filename: str) -> Iterator[PdfDocument]:
    """The PDF at `path` open in pdfium, PDFIUM_LOCK held only while it is opened and closed:
    the caller holds it around each use (a page at a time), so page views are not kept waiting
    behind a whole file's reading. InvalidInput naming `filename` when pdfium cannot open it.
    """

    with PDFIUM_LOCK:
        document = _open(path, f"{filename} could not be read as pdf (PdfiumError)",
                         "Check that it opens in a PDF viewer, or save it again.")
    try:
        yield document
    finally:
        with PDFIUM_LOCK:
            document.close()


def _open(path: Path, failure: str, hint: str) -> PdfDocument:
    """pdfium's document at `path` (call under PDFIUM_LOCK); InvalidInput saying `failure`."""
    import pypdfium2

    try:
        return pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as exc:
        raise InvalidInput(f"{failure}: {exc}.", hint) from exc

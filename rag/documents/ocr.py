"""Read text from page images with Tesseract (pytesseract): scans, photos and image-only PDF pages.

Images are checked from their header before anything is decoded (an image bomb is refused by
its declared width x height), each page gets at most `ocr_page_timeout_s` of Tesseract's time,
and Tesseract's output comes back as paragraphs: the lines of a paragraph joined with spaces
(a word hyphenated at a line end joined again), so titles, paragraphs and sentences come out
as they do for text files. PDF pages are rendered with pypdfium2 at `ocr_dpi` (or their scans'
own resolution when lower).
"""

from __future__ import annotations

import itertools
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rag.documents.pdfium import PDFIUM_LOCK
from rag.errors import ConfigError, InvalidInput, TooLarge
from rag.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image
    from pypdfium2 import PdfDocument, PdfPage

IMAGE_KINDS = frozenset({"png", "jpeg", "tiff", "webp"})
_WORD = re.compile(r"\w")
_HYPHENATED = re.compile(r"(?<=[a-z])-$")
_SHORT_LINE = 0.7  # a line ending before this share of its block's width ends a paragraph
_LEAST_DPI = 150  # a scan of lower resolution is rendered enlarged to this
_SURE = 60  # Tesseract's confidence (0-100) in a word that sets the page's letter size
_MIN_WORD_CHARS = 16  # a PDF page whose text layer has fewer word characters is OCR'd
_INSTALL_HINT = "Install it with `apt-get install tesseract-ocr` (the README's system parts)."


# ---------------------------------------------------------------------------------------------
# Tesseract


def check_tesseract(settings: Settings) -> None:
    """Raise ConfigError unless Tesseract and every language of `ocr_languages` are installed."""
    if shutil.which("tesseract") is None:
        raise ConfigError("Tesseract is not installed (no `tesseract` on PATH); it reads "
                          "scanned pages and images.", hint=_INSTALL_HINT)
    import pytesseract

    try:
        installed = set(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractError, OSError) as exc:
        raise ConfigError(f"Tesseract does not run: {exc}", hint=_INSTALL_HINT) from exc
    missing = [lang for lang in settings.ocr_languages.split("+") if lang not in installed]
    if missing:
        packages = " ".join(_language_package(lang) for lang in missing)
        raise ConfigError(
            f"Tesseract has no data for {', '.join(missing)} (RAG_OCR_LANGUAGES="
            f"{settings.ocr_languages}); installed: {', '.join(sorted(installed)) or 'none'}.",
            hint=f"Install it with `apt-get install {packages}`, or set RAG_OCR_LANGUAGES.",
        )


def _language_package(lang: str) -> str:
    """Debian's package of a Tesseract language: chi_sim -> tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + lang.lower().replace("_", "-")


class _Word(NamedTuple):
    """One word Tesseract read: its paragraph and line, confidence (0-100), box in pixels."""

    paragraph: tuple[int, int]  # (block, paragraph)
    line: int
    text: str
    confidence: float
    left: int
    right: int
    height: int


def page_paragraphs(image: Image, settings: Settings, label: str) -> list[str]:
    """The paragraphs Tesseract reads on one page image (`label` names the page in errors).

    A page without one word read with confidence gives nothing (a blank page's speckle is
    read as words of low confidence); on others, speckle read as words (low confidence and
    smaller than the page's letters) is dropped. A paragraph's lines are joined with spaces, and
    a line ending well short of its block's right edge (a title, a list item, a paragraph's end)
    closes a paragraph.
    """
    words = _read_words(image, settings, label)
    letters = [w.height for w in words if w.confidence >= _SURE and _WORD.search(w.text)]
    if not letters:
        return []  # nothing read with confidence: a blank or unreadable page, not text
    size = statistics.median(letters)
    kept = [w for w in words if _is_text(w, size)]
    found: list[str] = []
    for _, block in itertools.groupby(kept, key=lambda w: w.paragraph[0]):
        in_block = list(block)
        edges = min(w.left for w in in_block), max(w.right for w in in_block)
        for _, group in itertools.groupby(in_block, key=lambda w: w.paragraph):
            lines = [list(line) for _, line in itertools.groupby(group, key=lambda w: w.line)]
            found.extend(_paragraph_texts(lines, edges))
    return found


def _read_words(image: Image, settings: Settings, label: str) -> list[_Word]:
    import pytesseract

    if image.mode not in ("1", "L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "LA") else "L")
    try:
        data = pytesseract.image_to_data(
            image, lang=settings.ocr_languages, timeout=settings.ocr_page_timeout_s,
            output_type=pytesseract.Output.DICT,
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise ConfigError("Tesseract is not installed (no `tesseract` on PATH).",
                          hint=_INSTALL_HINT) from exc
    except RuntimeError as exc:  # pytesseract's timeout
        if "timeout" not in str(exc).lower():
            raise
        raise InvalidInput(
            f"OCR of {label} took longer than {settings.ocr_page_timeout_s:g} s "
            "(RAG_OCR_PAGE_TIMEOUT_S).",
            hint="Upload a cleaner or smaller scan, or raise RAG_OCR_PAGE_TIMEOUT_S.",
        ) from exc
    return [
        _Word((data["block_num"][i], data["par_num"][i]), data["line_num"][i], text.strip(),
              float(data["conf"][i]), data["left"][i], data["left"][i] + data["width"][i],
              data["height"][i])
        for i, text in enumerate(data["text"])
        if data["level"][i] == 5 and text.strip()
    ]


def _is_text(word: _Word, letter_height: float) -> bool:
    """Not speckle: a word read with confidence or letter-sized; punctuation alone, confidently."""
    if _WORD.search(word.text):
        return word.confidence >= 40 or word.height >= 0.7 * letter_height
    return word.confidence >= 70


def _paragraph_texts(lines: list[list[_Word]], edges: tuple[int, int]) -> Iterator[str]:
    """One Tesseract paragraph's lines as paragraphs, cut after lines ending short of the right
    edge of their block (`edges`: its left and right in pixels)."""
    short = edges[0] + _SHORT_LINE * (edges[1] - edges[0])
    texts: list[str] = []
    for line in lines:
        texts.append(" ".join(word.text for word in line))
        if line[-1].right < short:
            yield _join_lines(texts)
            texts = []
    if texts:
        yield _join_lines(texts)


def _join_lines(lines: list[str]) -> str:
    """Lines joined with spaces; a word hyphenated at a line's end is joined again."""
    joined = lines[0]
    for line in lines[1:]:
        if _HYPHENATED.search(joined) and line[:1].islower():
            joined = joined[:-1] + line
        else:
            joined += " " + line
    return joined


# ---------------------------------------------------------------------------------------------
# Image files


def check_image(path: Path, filename: str, settings: Settings) -> None:
    """Refuse an image from its header alone: unreadable, too many pixels, or too many pages."""
    with _open_image(path, filename, settings) as image:
        _check_pixels(image.width, image.height, filename, settings)
        frames = getattr(image, "n_frames", 1)
        if frames > settings.ocr_max_pages:
            raise TooLarge(
                f"{filename} has {frames} pages, over the limit of {settings.ocr_max_pages} "
                "pages read with OCR (RAG_OCR_MAX_PAGES).",
                hint="Split the file, or raise RAG_OCR_MAX_PAGES.",
            )


def image_pages(path: Path, filename: str, settings: Settings) -> Iterator[tuple[int, list[str]]]:
    """(1-based page, paragraphs) for each page of the image (a multi-page TIFF has several)."""
    from PIL import ImageOps

    check_tesseract(settings)
    check_image(path, filename, settings)
    with _open_image(path, filename, settings) as image:
        frames = getattr(image, "n_frames", 1)
        for number in range(1, frames + 1):
            image.seek(number - 1)
            _check_pixels(image.width, image.height, filename, settings)
            label = f"{filename} page {number}" if frames > 1 else filename
            upright = ImageOps.exif_transpose(image)  # a photo taken sideways, as shown
            yield number, page_paragraphs(upright, settings, label)


def _open_image(path: Path, filename: str, settings: Settings) -> Image:
    """The image, opened lazily (Pillow reads the header only); InvalidInput when unreadable."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    PILImage.MAX_IMAGE_PIXELS = settings.max_image_pixels  # Pillow's own bomb check, as backup
    try:
        return PILImage.open(path)
    except PILImage.DecompressionBombError as exc:  # over twice Pillow's limit
        count = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(count.group(1)):,} pixels" if count else "too many pixels"
        raise _too_many_pixels(filename, size, settings) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        detail = str(exc).replace(str(path), filename)  # never the staging path
        raise InvalidInput(
            f"{filename} is not a readable image ({type(exc).__name__}: {detail}).",
            hint="Check that it opens in an image viewer, save it again and re-upload it.",
        ) from exc


def _check_pixels(width: int, height: int, name: str, settings: Settings) -> None:
    if width * height > settings.max_image_pixels:
        raise _too_many_pixels(name, f"{width} x {height} = {width * height:,} pixels", settings)


def _too_many_pixels(name: str, size: str, settings: Settings) -> TooLarge:
    return TooLarge(
        f"{name} is {size}, over the limit of {settings.max_image_pixels:,} pixels "
        "(RAG_MAX_IMAGE_PIXELS).",
        hint="This looks like a decompression bomb; upload a smaller image, or raise "
        "RAG_MAX_IMAGE_PIXELS.",
    )


# ---------------------------------------------------------------------------------------------
# PDF pages without a text layer


def pages_to_ocr(path: Path, filename: str, settings: Settings) -> frozenset[int]:
    """The 1-based pages whose text layer holds no real text; refuses more than ocr_max_pages.

    Only pdfium's text extraction runs here (milliseconds a page), so a PDF of thousands of
    blank scans is refused before any page is rendered.
    """
    import pypdfium2

    found = []
    with PDFIUM_LOCK:
        document = pypdfium2.PdfDocument(path)
        try:
            for index in range(len(document)):
                page = document[index]
                textpage = page.get_textpage()
                text = textpage.get_text_bounded()
                textpage.close()
                page.close()
                if len(_WORD.findall(text)) < _MIN_WORD_CHARS:
                    found.append(index + 1)
                if len(found) > settings.ocr_max_pages:
                    raise TooLarge(
                        f"{filename} has more than {settings.ocr_max_pages} pages without a "
                        f"text layer (of {len(document)}); at most {settings.ocr_max_pages} "
                        "are read with OCR (RAG_OCR_MAX_PAGES).",
                        hint="Split the PDF, or raise RAG_OCR_MAX_PAGES.",
                    )
        finally:
            document.close()
    if found:
        check_tesseract(settings)
    return frozenset(found)


class ScannedPages:
    """The pages of a PDF to read with OCR (`numbers`, 1-based) and their reading, one by one.

    A context manager: the PDF stays open in pdfium while its pages are read.
    """

    def __init__(self, path: Path, filename: str, settings: Settings) -> None:
        self.path, self.filename, self.settings = path, filename, settings
        self.numbers = pages_to_ocr(path, filename, settings)
        self._document: PdfDocument | None = None

    def __enter__(self) -> ScannedPages:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._document is not None:
            with PDFIUM_LOCK:
                self._document.close()
            self._document = None

    def read(self, number: int) -> list[str]:
        """Render page `number` (see `_render_dpi`) and return the paragraphs Tesseract reads."""
        import pypdfium2

        label = f"page {number} of {self.filename}"
        with PDFIUM_LOCK:
            if self._document is None:
                self._document = pypdfium2.PdfDocument(self.path)
            page = self._document[number - 1]
            try:
                scale = _render_dpi(page, self.settings.ocr_dpi) / 72
                width, height = page.get_size()  # points
                _check_pixels(round(width * scale), round(height * scale), label, self.settings)
                bitmap = page.render(scale=scale, grayscale=True)
            finally:
                page.close()  # here, under the lock, not whenever the collector runs
        image = bitmap.to_pil()  # shares the bitmap's memory: `bitmap` stays alive meanwhile
        return page_paragraphs(image, self.settings, label)


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

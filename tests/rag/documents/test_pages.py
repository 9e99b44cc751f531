"""PDF pages rendered with pypdfium2, and a quote found on its page whatever the line breaks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from rag.documents.pages import MAX_RENDER_PIXELS, find_folded, quote_on_page, render_page
from rag.documents.pdfium import PDFIUM_LOCK, pdf_document
from rag.errors import InvalidInput, NotFound, Overloaded
from tests.ingest.helpers import make_pdf

FACT = ("The Quillby lighthouse keeper records 412 passing ships every winter, writing each "
        "name in a green ledger that is kept in the lamp room.")


def chars(text: str) -> list[str]:
    return list(text)


def test_a_quote_is_found_across_line_breaks_hyphens_and_ligatures() -> None:
    page = chars("Intro.\r\nThe keeper re-\r\ncords 412 ships in a green\r\nledger. "
                 "The ﬁnal line.")
    start = page.index("T", 5)
    assert find_folded(page, "The keeper records 412 ships in a green ledger.") == (
        start, "".join(page).index("ledger") + len("ledger"))
    final = "".join(page).index("ﬁnal")
    assert find_folded(page, "The final line") == ("".join(page).index("The ﬁ"),
                                                   final + len("ﬁnal line"))
    assert find_folded(page, "Nothing like it anywhere on this page at all") is None
    assert find_folded([], "anything") is None


def test_a_quote_running_onto_the_next_page_is_found_as_far_as_it_goes() -> None:
    page = chars("Earlier text. The keeper records 412 passing ships every")
    found = find_folded(page, "The keeper records 412 passing ships every winter in a ledger.")
    assert found == ("".join(page).index("The"), len(page))
    # and one that began on the page before: its end
    page = chars("winter in a green ledger. Then other words follow here.")
    assert find_folded(page, "The keeper records 412 ships every winter in a green ledger.") == (
        0, "".join(page).index("ledger") + len("ledger"))


def test_quote_boxes_cover_the_quote_on_its_page(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "q.pdf", ["Front page words. " * 30, "Winter. " + FACT + " End."])
    on_page = quote_on_page(pdf, 2, FACT)
    assert on_page.pages == 2 and on_page.has_text
    assert round(on_page.width) == 595 and round(on_page.height) == 842  # A4 in points
    assert 1 <= len(on_page.boxes) <= 3  # a line each
    for box in on_page.boxes:
        assert 0 <= box.left < box.left + box.width <= 1
        assert 0 <= box.top < box.top + box.height < 0.3  # near the top, where the text is
    assert quote_on_page(pdf, 1, FACT).boxes == ()  # not on the other page
    with pytest.raises(NotFound, match="no page 3; it has 2"):
        quote_on_page(pdf, 3, FACT)


def test_pages_render_as_png_and_a_scan_has_no_text_layer(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "q.pdf", [FACT])
    png = render_page(pdf, 1)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1191, 1684)  # A4 at 144 dpi
        scan = tmp_path / "scan.png"
        image.save(scan)
    from fpdf import FPDF

    scanned = FPDF()
    scanned.add_page()
    scanned.image(str(scan), x=0, y=0, w=210)
    scanned.output(str(tmp_path / "scanned.pdf"))
    on_page = quote_on_page(tmp_path / "scanned.pdf", 1, FACT)
    assert not on_page.has_text and on_page.boxes == ()


def test_a_piece_of_a_quote_found_elsewhere_on_a_page_marks_nothing() -> None:
    quote = "The keeper records 412 passing ships every winter in a green ledger."
    # Another sentence opens like the quote, in the middle of the page: the wrong page.
    page = chars("Intro words here. The keeper records 412 passing ships of other kinds, "
                 "then more and more text follows it to the end of this page, far beyond "
                 "the few characters a footer or a page number would take at its foot.")
    assert find_folded(page, quote) is None
    # Its end, far from the page's start: not a quote continued from the page before.
    page = chars("A long opening paragraph that has nothing to do with it, running on and "
                 "on well past any header a page could have. Every winter in a green ledger.")
    assert find_folded(page, quote) is None


def test_a_quote_whose_middle_reads_differently_is_marked_from_its_start_to_its_end() -> None:
    quote = "The keeper records 412 passing ships every winter in a green ledger."
    text = ("Before. The keeper records 412 passing [figure 3] vessels every winter in a "
            "green ledger. After.")
    found = find_folded(chars(text), quote)
    assert found == (text.index("The keeper"), text.index("ledger") + len("ledger"))
    # the same start and end far apart (a whole page between) mark nothing
    far = ("The keeper records 412 passing " + "unrelated words in between. " * 20
           + "every winter in a green ledger.")
    assert find_folded(chars(far), quote) is None


def test_a_huge_page_renders_within_the_pixel_limit(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format=(5000, 5000))  # mm: about 14,173 points a side, pdfium's largest
    pdf.add_page()
    pdf.set_font("helvetica", size=200)
    pdf.cell(0, 100, "Huge")
    pdf.output(str(tmp_path / "huge.pdf"))
    with Image.open(io.BytesIO(render_page(tmp_path / "huge.pdf", 1))) as image:
        assert image.width * image.height <= MAX_RENDER_PIXELS
        assert image.width * image.height > MAX_RENDER_PIXELS * 0.99


def test_pdfium_busy_past_the_wait_is_refused_as_overloaded(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "q.pdf", [FACT])
    with (PDFIUM_LOCK, pytest.raises(Overloaded, match="busy") as refused,
          pdf_document(pdf, wait_s=0.05)):
        pass
    assert refused.value.retry_after_s
    with pdf_document(pdf) as document:  # free again
        assert len(document) == 1


def test_a_file_pdfium_cannot_read_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    with pytest.raises(InvalidInput, match="cannot be opened"):
        render_page(tmp_path / "bad.pdf", 1)
    assert PDFIUM_LOCK.acquire(blocking=False)  # and the lock was given back
    PDFIUM_LOCK.release()

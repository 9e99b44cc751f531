"""OCR: scans made here (text drawn at 150 dpi, speckle, a slight tilt) read as images and as
PDF pages without a text layer, with pages, titles and exact offsets; and every bad scan
(corrupt, a pixel bomb, blank, thousands of blank pages, too slow) fails alone and clearly."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fpdf import FPDF
from PIL import Image as PILImage
from PIL.Image import Image

from eval.scans import character_accuracy, render_pages, save_pdf
from rag.documents.chunking import SEPARATOR
from rag.documents.detection import SUPPORTED, detect_kind, inspect_file
from rag.documents.ocr_pdf import pages_to_ocr
from rag.documents.parsing import parse
from rag.errors import ConfigError, EmptyDocument, InvalidInput, TooLarge, UnsupportedType
from rag.settings import Settings
from rag.types import Element

TITLE = "Tide Tables of Port Vell"
BODY = ("High tide in Port Vell comes at seven in the morning on Mondays. The harbour master "
        "posts the times on the door of the lighthouse every week.")
SECOND = ("The ferry to Sant Elm leaves from the north pier at nine. Tickets are sold on "
          "board and cost four euros.")


def scan(*paragraphs: str, seed: int = 0) -> Image:
    """One short page (Tesseract takes about a second on it) holding all the paragraphs."""
    pages = render_pages(paragraphs, seed=seed, inches=(8.5, 2.0 + 0.6 * len(paragraphs)))
    assert len(pages) == 1
    return pages[0]


def elements(path: Path, name: str, **settings: Any) -> list[Element]:
    return list(parse(path, name, Settings(**settings)))


def text_of(found: Sequence[Element]) -> str:
    return SEPARATOR.join(e.text for e in found)


# ---------------------------------------------------------------------------------------------
# Images read like text


@pytest.mark.parametrize(("name", "kind"), [("scan.png", "png"), ("photo.jpg", "jpeg"),
                                            ("page.webp", "webp")])
def test_an_image_reads_like_a_text_file(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / "upload"
    scan(TITLE, BODY).save(path, format={"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[kind],
                           dpi=(150, 150))
    assert inspect_file(path, name, Settings()) == kind
    found = elements(path, name)
    title = found[0]
    assert title.category == "Title" and character_accuracy(TITLE, title.text) > 0.9
    body = next(e for e in found if "harbour" in e.text)
    assert body.category == "NarrativeText" and body.title_path == (title.text,)
    assert {e.page for e in found} == {1}
    assert character_accuracy(TITLE + " " + BODY, text_of(found)) > 0.95


def test_a_photo_taken_sideways_is_read_upright(tmp_path: Path) -> None:
    path = tmp_path / "sideways.jpg"
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    scan(BODY).rotate(90, expand=True).save(path, exif=exif, quality=90)
    assert "lighthouse" in text_of(elements(path, path.name))


def test_each_page_of_a_tiff_is_a_page(tmp_path: Path) -> None:
    path = tmp_path / "fax.tiff"
    first, second = scan(TITLE, BODY), scan(SECOND, seed=1)
    first.save(path, save_all=True, append_images=[second], compression="tiff_lzw")
    found = elements(path, path.name)
    assert "lighthouse" in text_of([e for e in found if e.page == 1])
    assert "north pier" in text_of([e for e in found if e.page == 2])
    assert {e.page for e in found} == {1, 2}


def test_a_mixed_pdf_keeps_its_text_layer_and_reads_its_scanned_page(tmp_path: Path) -> None:
    image = tmp_path / "page2.png"
    scan(TITLE, BODY).save(image, dpi=(150, 150))
    pdf = FPDF()
    pdf.add_page()
    pdf.set_y(60)
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(w=0, text=SECOND)
    pdf.add_page(format=(210, 210 * 3.2 / 8.5))  # the scan covers its page
    pdf.image(str(image), x=0, y=0, w=210)
    path = tmp_path / "mixed.pdf"
    pdf.output(str(path))
    found = elements(path, "mixed.pdf")
    pages = {page: text_of([e for e in found if e.page == page]) for page in (1, 2)}
    assert pages[1] == SECOND  # the text layer, verbatim: not OCR'd
    assert "lighthouse" in pages[2] and "Tide Tables" in pages[2]
    assert next(e for e in found if e.page == 2).category == "Title"


def test_a_scanned_pdf_of_prose_reads_accurately(tmp_path: Path) -> None:
    path = save_pdf(render_pages([TITLE, BODY, SECOND], seed=4, inches=(8.5, 3.2)),
                    tmp_path / "scan.pdf")
    found = elements(path, "scan.pdf", ocr_dpi=150)
    assert character_accuracy("\n".join([TITLE, BODY, SECOND]), text_of(found)) > 0.95


def test_quotes_from_an_ocrd_image_are_exact_slices_of_the_parsed_text(
    make_service: Any, tmp_path: Path
) -> None:
    service = make_service()
    path = tmp_path / "tides.png"
    scan(TITLE, BODY, SECOND, seed=2).save(path, dpi=(150, 150))
    doc = service.documents.ingest_file(path)
    assert doc.content_type == "image/png" and doc.state == "indexed"
    parsed = text_of(elements(path, path.name))  # Tesseract reads the same image the same way
    chunks = service.store.get_chunks(service.store.chunk_ids(doc.id)).values()
    assert chunks and all(c.text == parsed[c.start:c.end] and c.page == 1 for c in chunks)
    sentences = [s for s, _ in service.store.sentences_within([(doc.id, 0, len(parsed))])]
    assert len(sentences) >= 3
    assert all(s.text == parsed[s.start:s.end] for s in sentences)
    assert any("north pier" in s.text for s in sentences)


# ---------------------------------------------------------------------------------------------
# Detection


def test_image_kinds_come_from_content_and_a_misnamed_image_is_refused(tmp_path: Path) -> None:
    image = scan("x", seed=0).resize((40, 20))
    for fmt, kind in (("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"), ("WEBP", "webp")):
        path = tmp_path / kind
        image.save(path, format=fmt)
        assert detect_kind(path, "upload") == kind
        assert SUPPORTED[kind] == f"image/{kind}"
    assert detect_kind(tmp_path / "jpeg", "holiday.png") == "jpeg"  # one image kind for another
    with pytest.raises(UnsupportedType, match=r"notes\.txt is named as a txt file.*image/png"):
        detect_kind(tmp_path / "png", "notes.txt")
    (tmp_path / "words").write_text("plain words, not a picture")
    with pytest.raises(UnsupportedType, match=r"scan\.png is named as a png file"):
        detect_kind(tmp_path / "words", "scan.png")


# ---------------------------------------------------------------------------------------------
# Bad scans


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` (1 bit grey) with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b""))


def test_an_image_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(200_000, 200_000))  # 40 gigapixels in 4 kB
    started = time.perf_counter()
    with pytest.raises(TooLarge, match=r"bomb\.png is 40,000,000,000 pixels, over the limit "
                                       r"of 60,000,000 pixels \(RAG_MAX_IMAGE_PIXELS\)"):
        inspect_file(path, "bomb.png", Settings())
    with pytest.raises(TooLarge, match="RAG_MAX_IMAGE_PIXELS"):
        elements(path, "bomb.png")
    assert time.perf_counter() - started < 5
    # Pillow allocates in C, out of tracemalloc's sight: the peak resident size of a fresh
    # process that checks the bomb, before and after.
    script = ("import resource, sys\nfrom pathlib import Path\n"
              "from rag.documents.detection import inspect_file\n"
              "from rag.settings import Settings\nfrom rag.errors import TooLarge\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    inspect_file(Path(sys.argv[1]), 'bomb.png', Settings())\n"
              "except TooLarge:\n    pass\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    grown_kb = subprocess.run([sys.executable, "-c", script, str(path)], check=True, text=True,
                              capture_output=True, cwd=Path(__file__).parents[3]).stdout
    assert int(grown_kb) < 20 << 10
    before = PILImage.MAX_IMAGE_PIXELS
    small = tmp_path / "small.png"
    small.write_bytes(png_header(300, 300))
    with pytest.raises(TooLarge, match=r"small\.png is 300 x 300 = 90,000 pixels"):
        inspect_file(small, "small.png", Settings(max_image_pixels=50_000))
    assert before == PILImage.MAX_IMAGE_PIXELS  # Pillow's global limit is left alone
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_header(40_000, 10))
    with pytest.raises(TooLarge, match=r"wide\.png is 40000 x 10 pixels; Tesseract reads at "
                                       r"most 32767 pixels a side"):
        inspect_file(wide, "wide.png", Settings())


def test_a_corrupt_image_is_invalid_and_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(InvalidInput, match=r"broken\.png is not a readable image"):
        inspect_file(garbage, "broken.png", Settings())
    cut = tmp_path / "cut"
    scan(TITLE, BODY).save(cut, format="PNG")
    cut.write_bytes(cut.read_bytes()[:3000])  # the header reads; the pixels are cut short
    assert inspect_file(cut, "cut.png", Settings()) == "png"
    with pytest.raises(InvalidInput, match=r"cut\.png could not be read as png"):
        elements(cut, "cut.png")


def test_an_image_without_text_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    scan("").save(path)
    with pytest.raises(EmptyDocument, match=r"blank\.png is an image in which OCR found no text"):
        elements(path, "blank.png")


def blank_pdf(path: Path, pages: int) -> Path:
    """A PDF of `pages` blank scans (image-only pages, no text layer)."""
    page = scan("").resize((128, 165))
    page.save(path, save_all=True, append_images=[page] * (pages - 1), resolution=15)
    return path


def test_a_pdf_with_too_many_pages_to_read_is_refused_before_any_ocr(tmp_path: Path) -> None:
    path = blank_pdf(tmp_path / "blank.pdf", 12)
    started = time.perf_counter()
    with pytest.raises(TooLarge, match=r"more than 5 scanned pages \(of 12\).*"
                                       r"RAG_OCR_MAX_PAGES") as caught:
        elements(path, "blank.pdf", ocr_max_pages=5)
    assert "Split the PDF" in caught.value.hint
    assert time.perf_counter() - started < 2  # 6 pages of OCR would take longer
    with pytest.raises(EmptyDocument, match=r"has no text layer and OCR found no text"):
        elements(blank_pdf(tmp_path / "three.pdf", 3), "three.pdf")


def test_two_thousand_blank_pages_fail_within_seconds(tmp_path: Path) -> None:
    path = blank_pdf(tmp_path / "archive.pdf", 2000)
    started = time.perf_counter()
    with pytest.raises(TooLarge, match="more than 500 scanned pages"):
        elements(path, "archive.pdf")  # the default RAG_OCR_MAX_PAGES
    assert time.perf_counter() - started < 5


def test_finding_scanned_pages_holds_pdfium_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass over a PDF's pages takes the lock once a page (so a page view waits for one
    page at most), never once for the whole file."""
    import rag.documents.ocr_pdf as ocr_pdf

    real = ocr_pdf.PDFIUM_LOCK
    held: list[int] = []

    class Counted:
        def __enter__(self) -> None:
            real.acquire()
            held.append(1)

        def __exit__(self, *exc: object) -> None:
            real.release()

    monkeypatch.setattr(ocr_pdf, "PDFIUM_LOCK", Counted())
    path = blank_pdf(tmp_path / "archive.pdf", 300)
    with pytest.raises(TooLarge, match=r"more than 299 scanned pages \(of 300\)"):
        pages_to_ocr(path, "archive.pdf", Settings(ocr_max_pages=299))  # pdfium only
    assert len(held) >= 300
    assert not real.locked()


def test_a_page_over_the_time_limit_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "slow.png"
    scan(TITLE, BODY).save(path)
    with pytest.raises(InvalidInput, match=r"OCR of slow\.png took longer than 0\.01 s "
                                           r"\(RAG_OCR_PAGE_TIMEOUT_S\)"):
        elements(path, "slow.png", ocr_page_timeout_s=0.01)


def test_missing_tesseract_or_language_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytesseract

    path = tmp_path / "page.png"
    scan(TITLE).save(path)
    installed = set(pytesseract.get_languages(config=""))
    missing = next(lang for lang in ("chi_sim", "tam_old", "xqz_test") if lang not in installed)
    with pytest.raises(ConfigError, match=missing) as caught:
        elements(path, "page.png", ocr_languages=f"eng+{missing}")
    assert f"apt-get install tesseract-ocr-{missing.replace('_', '-')}" in caught.value.hint
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on it
    with pytest.raises(ConfigError, match="Tesseract is not installed") as caught:
        elements(path, "page.png")
    assert "apt-get install tesseract-ocr" in caught.value.hint


def test_a_scanned_pdf_page_is_one_covered_by_images_with_little_text(tmp_path: Path) -> None:
    figures = FPDF()
    figures.set_font("helvetica", size=11)
    for number in range(1, 601):  # 600 pages of text too short to count: no images, no OCR
        figures.add_page()
        figures.cell(text=f"Figure {number}")
    figures.add_page()  # a blank page
    figures.output(str(tmp_path / "figures.pdf"))
    assert pages_to_ocr(tmp_path / "figures.pdf", "figures.pdf", Settings()) == frozenset()
    image = tmp_path / "scan.png"
    scan(TITLE, BODY).save(image, dpi=(150, 150))
    stamped = FPDF()
    stamped.set_font("helvetica", size=8)
    stamped.add_page(format=(210, 210 * 3.2 / 8.5))
    stamped.image(str(image), x=0, y=0, w=210)
    stamped.set_xy(150, 2)
    stamped.cell(text="Received 2024-03-05 Archive 118")  # a stamp on the scan
    path = tmp_path / "stamped.pdf"
    stamped.output(str(path))
    assert pages_to_ocr(path, "stamped.pdf", Settings()) == {1}
    assert "lighthouse" in text_of(elements(path, "stamped.pdf"))


def test_only_the_first_frame_of_an_animated_png_is_read(tmp_path: Path) -> None:
    """An animated PNG's (or an MPO photo's) later frames are not pages of a document."""
    path = tmp_path / "pages.png"
    scan(TITLE).save(path, save_all=True, append_images=[scan(SECOND, seed=1)])
    inspect_file(path, "pages.png", Settings(ocr_max_pages=1))  # one page: within the limit
    found = elements(path, path.name)
    assert {e.page for e in found} == {1}
    assert "north pier" not in text_of(found)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on the headers cut short
def test_each_tiff_frame_is_checked_at_upload_and_a_corrupt_one_is_invalid(
    tmp_path: Path,
) -> None:
    path = tmp_path / "frames.tiff"
    small, large = PILImage.new("1", (100, 100), 1), PILImage.new("1", (3000, 3000), 1)
    small.save(path, save_all=True, append_images=[large], compression="group4")
    with pytest.raises(TooLarge, match=r"frames\.tiff page 2 is 3000 x 3000 = 9,000,000 pixels"):
        inspect_file(path, "frames.tiff", Settings(max_image_pixels=1_000_000))
    data = path.read_bytes()
    for cut in range(120, 260, 7):  # the second frame's header cut short: never a crash
        path.write_bytes(data[:cut])
        try:
            inspect_file(path, "frames.tiff", Settings())
        except InvalidInput as exc:
            assert "frames.tiff is not a readable image" in exc.message


@pytest.mark.parametrize("kind", ["16-bit grey", "black on transparent"])
def test_wide_grey_and_transparent_images_read(tmp_path: Path, kind: str) -> None:
    page = scan(BODY, seed=3)
    if kind == "16-bit grey":
        image = page.convert("I").point(lambda value: value * 257).convert("I;16")
    else:
        image = PILImage.new("RGBA", page.size, (0, 0, 0, 0))
        image.putalpha(page.point(lambda value: 255 - value))
    path = tmp_path / "page.png"
    image.save(path)
    assert "lighthouse" in text_of(elements(path, path.name))


def test_tesseract_alone_gets_ocr_threads_and_the_file_has_a_deadline(tmp_path: Path) -> None:
    log = tmp_path / "threads.log"
    wrapper = tmp_path / "bin" / "tesseract"  # the real Tesseract, noting its thread limit
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$OMP_THREAD_LIMIT" >> {log}\n'
                       'exec /usr/bin/tesseract "$@"\n')
    wrapper.chmod(0o755)
    path = tmp_path / "page.png"
    scan(BODY).save(path)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{wrapper.parent}:{old_path}"
    try:
        assert "lighthouse" in text_of(elements(path, path.name, ocr_threads=3))
    finally:
        os.environ["PATH"] = old_path
    assert log.read_text().split()[-1] == "3" and "OMP_THREAD_LIMIT" not in os.environ
    with pytest.raises(InvalidInput, match=r"OCR of page\.png ran past its file's limit of "
                                           r"0\.01 s \(RAG_OCR_FILE_TIMEOUT_S\)"):
        elements(path, path.name, ocr_file_timeout_s=0.01)


# ---------------------------------------------------------------------------------------------
# Through the API


@pytest.mark.slow
def test_a_png_uploaded_to_the_live_api_is_indexed_and_cited(
    tmp_path: Path, embedder: Any, generator: Any, models_dir: Path
) -> None:
    from tests.api.helpers import live_api

    image = tmp_path / "harbour.png"
    scan(TITLE, BODY, seed=5).save(image, dpi=(150, 150))
    with live_api(tmp_path, embedder, generator, models_dir) as base, \
            httpx.Client(base_url=base, timeout=60) as client:
        response = client.post("/v1/documents",
                               files=[("file", ("harbour.png", image.read_bytes(), "image/png"))])
        assert response.status_code == 202, response.text
        job_id = response.json()["documents"][0]["job_id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == "done", job
        answer = client.post("/v1/ask", json={"question": "Where are the harbour master's "
                                              "tide times posted?"}).json()
        top = answer["citations"][0]
        assert top["filename"] == "harbour.png" and top["page"] == 1
        assert "lighthouse" in top["text"]

"""Evidence: sentence spans with exact offsets for every format, selection, the staged ask path."""

from __future__ import annotations

import email.message
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import openpyxl
import pptx
import pytest

from eval.scans import render_pages
from rag.ask.context import AskContext, quiet
from rag.ask.pipeline import AskPipeline
from rag.ask.service import AskRequest
from rag.documents.chunking import parsed_text
from rag.documents.detection import SUPPORTED
from rag.documents.parsing import parse
from rag.documents.sentences import sentence_spans
from rag.types import NO_ANSWER
from tests.rag.documents.test_parsing import make_docx, make_html, make_pdf


@pytest.mark.parametrize("seed", range(20))
def test_spans_are_exact_ordered_and_cover_the_text(seed: int) -> None:
    rng = random.Random(seed)
    words = ["alpha", "beta.", "Gamma?", "delta!", "e.g.", "3.5", "\n", "\n\n", "- item", "|",
             "x" * 30, "Mr.", "(see [1])", "\t", "  "]
    text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 400)))
    spans = sentence_spans(text, max_chars=80)
    for (a, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert a < b <= c
    for a, b in spans:
        assert text[a:b] == text[a:b].strip() and b - a <= 80
    covered = "".join(text[a:b] for a, b in spans)
    assert "".join(covered.split()) == "".join(text.split())  # nothing but whitespace is lost


def test_text_without_punctuation_yields_rows_lines_and_windows() -> None:
    table = "city | population\nParis | 2100000\nLyon | 520000"
    assert [table[a:b] for a, b in sentence_spans(table)] == table.splitlines()
    listing = "Steps\n- unpack the box\n- plug it in\n- press the red button"
    assert [listing[a:b] for a, b in sentence_spans(listing)] == [
        "Steps", "- unpack the box", "- plug it in", "- press the red button"]
    code = "x = 1 " * 200  # one long line, no sentence end
    spans = sentence_spans(code, max_chars=100)
    assert len(spans) > 10 and all(b - a <= 100 for a, b in spans)


def _files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """One file per supported kind: kind -> (path, filename)."""
    def write(name: str, data: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Rockets"
    slide.placeholders[1].text = "Rocket engines burn kerosene with liquid oxygen."
    deck.save(str(tmp_path / "deck.pptx"))
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["fruit", "price"])
    sheet.append(["apple", 3])
    book.save(str(tmp_path / "shop.xlsx"))
    message = email.message.EmailMessage()
    message["Subject"] = "Quarterly report"
    message["From"] = "ana@example.com"
    message["To"] = "bo@example.com"
    message.set_content("The quarterly revenue grew by twelve percent. Costs stayed flat.")
    files = {
        "txt": write("notes.txt", "BEES\n\nBees make honey in the hive. They need flowers.\n"),
        "md": write("readme.md", "# Valves\n\nThe valve opens at 3 bar. It closes at 1 bar.\n"),
        "rst": write("manual.rst", "Manual\n======\n\nRun the installer. Then reboot.\n"),
        "html": make_html(tmp_path / "guide.html"),
        "xml": write("books.xml", "<?xml version='1.0'?><catalog><book>Dune by Frank Herbert"
                                  "</book></catalog>"),
        "pdf": make_pdf(tmp_path / "solar.pdf"),
        "docx": make_docx(tmp_path / "handbook.docx"),
        "pptx": tmp_path / "deck.pptx",
        "xlsx": tmp_path / "shop.xlsx",
        "csv": write("cities.csv", "city,population\nParis,2100000\nLyon,520000\n"),
        "eml": write("report.eml", bytes(message)),
        "json": write("widget.json", json.dumps({"name": "widget", "weight": "3 kg"})),
    }
    # One short scan (Tesseract reads it in about a second), saved in each image format.
    page = render_pages(["The lighthouse keeper lights the lamp at dusk every evening."],
                        inches=(8.5, 2.6))[0]
    for kind, name in (("png", "lamp.png"), ("jpeg", "lamp.jpg"), ("tiff", "lamp.tif"),
                       ("webp", "lamp.webp")):
        page.save(tmp_path / name)
        files[kind] = tmp_path / name
    assert set(files) == set(SUPPORTED)
    return {kind: (path, path.name) for kind, path in files.items()}


@pytest.mark.slow
def test_every_quote_is_the_document_text_at_its_offsets(make_service: Any,
                                                         tmp_path: Path) -> None:
    service = make_service()
    docs = {}
    for kind, (path, name) in _files(tmp_path).items():
        doc = service.documents.ingest_file(path, name)
        text = parsed_text(parse(path, name, service.settings))
        stored = service.store.sentences_within([(doc.id, 0, len(text))])
        assert stored, kind
        for sentence, vector in stored:
            assert text[sentence.start : sentence.end] == sentence.text, kind
            assert vector.shape == (service.embedder.dimension,)
        docs[doc.id] = text
    for question in ("How many kilowatts does the photovoltaic array produce at noon?",
                     "How much paid vacation do employees receive?",
                     "What must be installed before the tank is filled?",
                     "By how much did the quarterly revenue grow?"):
        answer = service.asking.ask(AskRequest(question))
        assert answer.evidence, question
        for quote in answer.evidence:
            assert docs[quote.document_id][quote.start : quote.end] == quote.text


class _Reverse:
    """A stage as a later one would be added (a reranker): a class with `name` and `run`."""

    name = "reverse"

    def __init__(self) -> None:
        self.seen: list[int] = []

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        self.seen.append(len(ctx.chunks))
        return replace(ctx, chunks=ctx.chunks[::-1])


def test_a_stage_is_added_with_one_line(make_service: Any, tmp_path: Path) -> None:
    service = make_service()
    path = tmp_path / "pump.txt"
    path.write_text("Install the pump before you fill the tank. The pump needs 230 volts.\n\n"
                    "The tank holds 40 litres of water and weighs 12 kg when empty.\n")
    service.documents.ingest_file(path)
    reverse = _Reverse()
    stages = list(service.asking.pipeline.stages)
    after = [stage.name for stage in stages].index("retrieve") + 1
    # the one line:
    service.asking.pipeline = AskPipeline([*stages[:after], reverse, *stages[after:]])
    answer = service.asking.ask(AskRequest("What must be installed before filling the tank?"))
    assert len(reverse.seen) == 1 and reverse.seen[0] >= 1  # it ran once, on the retrieved
    assert list(answer.timings.stages) == ["followup", "retrieve", "reverse", "evidence",
                                           "prompt", "generate", "check", "short"]
    assert answer.timings.evidence_ms == answer.timings.stages["evidence"]
    assert answer.evidence and answer.mode in ("generated", "quote")

    off_topic = service.asking.ask(AskRequest("Who won the 1998 football world cup in France?"))
    assert (off_topic.text, off_topic.mode, off_topic.evidence) == (NO_ANSWER, "abstained", ())
    assert "generate" not in off_topic.timings.stages  # settled early: later stages skipped


def test_stage_names_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        AskPipeline([_Reverse(), _Reverse()])


def test_bm25_of_sentences_with_only_stopwords_is_zero_not_an_error() -> None:
    """Found by the contract test: the question "0" over sentences bm25s keeps no term of
    (only stopwords and punctuation) raised from inside bm25s, a 500 on POST /v1/ask."""
    from rag.ask.evidence import bm25_scores

    assert bm25_scores("0", ["The.", "a an the", "..."]).tolist() == [0.0, 0.0, 0.0]
    scores = bm25_scores("bees", ["Bees fly.", "The."])
    assert scores[0] > 0 and scores[1] == 0

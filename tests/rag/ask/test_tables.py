"""Tables as evidence: each row a span carrying its table's header, ranked and shown with it,
rows of one table chosen together for a list question, and answers checked against them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from rag.ask.check import CheckStage, Judge
from rag.ask.claims import Candidate
from rag.ask.context import AskContext
from rag.ask.evidence import asks_for_list, bm25_scores, with_table_rows
from rag.ask.prompt import build_evidence_prompt
from rag.ask.service import AskRequest
from rag.documents.chunking import parsed_text
from rag.documents.parsing import parse
from rag.documents.processing import with_sentences
from rag.documents.sentences import headed_spans, with_header
from rag.generation.model_files import load_tokenizer
from rag.settings import Settings
from rag.types import (
    Chunk,
    Element,
    Evidence,
    Prompt,
    Query,
    ScoredChunk,
    ScoredSentence,
    Sentence,
    SentenceDraft,
)

SAMPLES = Path(__file__).parents[3] / "rag" / "samples"
HEADER = "Extension | Format"
ROWS = [".pdf | PDF with a text layer", ".docx | Microsoft Word", ".md | Markdown"]
TABLE = "\n".join([HEADER, *ROWS])
ELEMENTS = [Element("Uploads are checked for size before they are read."),
            Element("Supported file types:"), Element(TABLE, "Table"),
            Element("Any other file type is refused before parsing starts.")]


def drafts() -> tuple[str, list[SentenceDraft]]:
    """The parsed text of `ELEMENTS` and their sentences, as ingestion collects them."""
    found: list[SentenceDraft] = []
    list(with_sentences(ELEMENTS, found))
    return parsed_text(ELEMENTS), found


def sentences() -> list[Sentence]:
    _, found = drafts()
    return [Sentence(n, "doc", d.start, d.end, d.text, header=d.header)
            for n, d in enumerate(found, start=1)]


def scored(items: list[Sentence], chunk: int = 0) -> list[ScoredSentence]:
    return [ScoredSentence(s, 1.0 / n, 0.4, 0.0, chunk, n) for n, s in enumerate(items, start=1)]


def test_rows_carry_their_header_and_keep_exact_offsets() -> None:
    text, found = drafts()
    assert [(d.text, d.header) for d in found] == [
        ("Uploads are checked for size before they are read.", None),
        ("Supported file types:", None), (HEADER, None),
        *((row, HEADER) for row in ROWS),
        ("Any other file type is refused before parsing starts.", None)]
    assert all(text[d.start : d.end] == d.text for d in found)
    # Pipes in text that is no table element carry no header.
    assert {h for _, _, h in headed_spans(TABLE)} == {None}
    assert headed_spans("one | line", table=True) == [(0, 10, None)]


def test_a_row_reads_as_its_header_names_its_cells() -> None:
    row = SentenceDraft(0, 0, ".pdf | PDF with a text layer", None, (), HEADER)
    assert with_header(row) == "Extension: .pdf; Format: PDF with a text layer"
    cut = SentenceDraft(0, 0, "part of a long row", None, (), HEADER)  # cells do not pair
    assert with_header(cut) == f"{HEADER}\npart of a long row"
    plain = SentenceDraft(0, 0, "Text | with a pipe", None, ())
    assert with_header(plain) == "Text | with a pipe"


def test_bm25_finds_a_row_by_its_header() -> None:
    rows = [s for s in sentences() if s.header]
    scores = bm25_scores("Which extension has Markdown?", [with_header(s) for s in rows])
    assert scores.argmax() == 2
    assert bm25_scores("extension", [s.text for s in rows]).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("question", "listing"), [
    ("Which formats can I upload?", True), ("What file types are supported?", True),
    ("What are the job states?", True), ("List the endpoints.", True),
    ("Which port does the server listen on?", False),
    ("What does the cancelled state mean?", False), ("What happens when Redis is down?", False),
    ("Which status code means too large?", False), ("How many rows are there?", False),
])
def test_list_questions(question: str, listing: bool) -> None:
    assert asks_for_list(question) is listing


def test_a_list_question_takes_the_rows_of_the_table_naming_it_first() -> None:
    items = sentences()
    prose = [s for s in items if not s.header]
    ranked = scored(prose + [s for s in items if s.header])
    chosen = with_table_rows("Which formats can I upload?", ranked[:2], ranked)
    assert [c.sentence.text for c in chosen] == [*ROWS, prose[0].text, prose[1].text]
    assert [c.rank for c in chosen] == [1, 2, 3, 4, 5]
    # A table whose header names nothing asked, and none of whose rows was chosen, stays out.
    assert with_table_rows("Which sizes are checked?", ranked[:2], ranked) == ranked[:2]


def test_rows_are_shown_under_their_header(tmp_path: Path) -> None:
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(Settings(data_dir=tmp_path))
    text, _ = drafts()
    chunk = ScoredChunk(Chunk(1, "doc", 0, text, 0, len(text)), 1.0, filename="ingestion.md")
    items = sentences()
    together = build_evidence_prompt("Which formats can I upload?", Evidence(
        (), ((chunk, tuple(scored([items[0], *items[3:6]]))),)), tokenizer, 2048, 64)
    assert (f"[1] ingestion.md: {items[0].text}\n{TABLE}\n\nQuestion:"
            in together.messages[1]["content"])
    alone = build_evidence_prompt("Which extension has Markdown?", Evidence(
        (), ((chunk, tuple(scored([items[5]]))),)), tokenizer, 2048, 64)
    assert "[1] ingestion.md: Extension: .md; Format: Markdown\n" in alone.messages[1]["content"]


def _pool(items: list[Sentence], tables: bool = True) -> list[Candidate]:
    return [Candidate(with_header(s), 1, s.document_id, s.id, s.header if tables else None,
                      s.text) for s in items]


def test_the_rows_of_a_table_support_an_answer_together() -> None:
    rows = [s for s in sentences() if s.header]
    pool = _pool(rows)
    sources = {1: " ".join(c.text for c in pool)}
    question = "Which formats can I upload?"
    answer = "You can upload PDF, Microsoft Word and Markdown files [1]."
    verdict = Judge(question, pool, sources, 0.5).verdict(answer)
    assert verdict.passed
    # No one row holds it: only the rows of one table together do.
    assert not Judge(question, _pool(rows, tables=False), sources, 0.5).verdict(answer).passed
    wrong = Judge(question, pool, sources, 0.5).verdict("You can upload JPEG and TIFF images.")
    assert not wrong.passed


def test_a_claim_from_a_row_carries_the_cell_the_question_asks_for() -> None:
    header = "Variable | Default | Meaning"
    rows = ["RAG_HOST | 127.0.0.1 | address the server binds to",
            "RAG_PORT | 8000 | port the server listens on"]
    items = [Sentence(n, "ops", n * 100, n * 100 + len(r), r, header=header)
             for n, r in enumerate(rows, start=1)]
    pool = _pool(items)
    judge = Judge("Which port does the server listen on by default?", pool,
                  {1: " ".join(c.text for c in pool)}, 0.5)
    assert judge.verdict("The server listens on port 8000 by default [1].").passed
    # The variable's name is in the row, but the question asks for its Default.
    assert not judge.verdict("RAG_PORT [1].").passed
    # A column the question names by a cell it already says (State: cancelled) asks nothing.
    states = [Sentence(1, "jobs", 0, 40, "cancelled | the document was deleted",
                       header="State | Meaning")]
    judge = Judge("What does the cancelled job state mean?", _pool(states),
                  {1: with_header(states[0])}, 0.5)
    assert judge.verdict("It means the document was deleted [1].").passed


def test_a_declined_list_question_is_answered_with_the_rows(tmp_path: Path) -> None:
    text, _ = drafts()
    chunk = ScoredChunk(Chunk(1, "doc", 0, text, 0, len(text)), 1.0, filename="ingestion.md")
    items = sentences()
    shown = tuple(scored([*items[3:6], items[0]]))
    prompt = Prompt((), (), (chunk,), (), 0, 0, evidence=(shown,))
    ctx = AskContext(Query("Which formats can I upload?"), prompt=prompt,
                     evidence=Evidence(shown, ((chunk, shown),)),
                     generated="The documents do not contain this.")
    done = CheckStage(0.5, "quote").run(ctx)
    try:
        next(done)
    except StopIteration as end:
        result: AskContext = end.value
    assert result.mode == "quote"
    assert result.text == "; ".join(f'"{row}"' for row in ROWS) + " [1]"
    assert [q.text for q in result.quotes[:3]] == ROWS
    assert all(text[q.start : q.end] == q.text for q in result.quotes)


@pytest.mark.slow
def test_which_formats_is_answered_from_the_sample_table(make_service: Any) -> None:
    """The shipped sample's table of upload formats answers the question, cited by its rows."""
    service = make_service()
    for path in sorted(SAMPLES.iterdir()):
        service.documents.ingest_file(path)
    parsed = parsed_text(parse(SAMPLES / "ingestion.md", "ingestion.md", service.settings))
    rows = {line for line in parsed.splitlines() if " | " in line}
    answer = service.asking.ask(AskRequest("Which formats can I upload?"))
    assert answer.mode != "abstained", answer.generated_text
    quoted = [q for q in answer.evidence if q.text in rows]
    assert len(quoted) >= 2, answer.evidence
    assert all(parsed[q.start : q.end] == q.text for q in quoted)
    assert any(name in answer.text for name in ("PDF", "Word", "Markdown", "docx")), answer.text

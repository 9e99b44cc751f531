"""Tables as evidence: each row a span carrying its table's header, ranked and shown with it,
rows of one table chosen together for a list question, and answers checked against them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from rag.ask.check import MAX_QUOTED_ROWS, CheckStage, Judge
from rag.ask.claims import Candidate, content_words, item_rows
from rag.ask.context import AskContext
from rag.ask.evidence import asks_for_list, bm25_scores, with_table_rows
from rag.ask.prompt import build_evidence_prompt
from rag.ask.service import AskRequest
from rag.ask.short import ShortAnswerStage
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


def scored(items: list[Sentence], chunk: int = 0, dense: float = 0.4) -> list[ScoredSentence]:
    return [ScoredSentence(s, 1.0 / n, dense, 0.0, chunk, n)
            for n, s in enumerate(items, start=1)]


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


def test_a_table_is_cut_only_at_its_line_breaks() -> None:
    text = "Format | Note\npdf | No.\nmd | Markdown. It is read as text. Links stay."
    spans = headed_spans(text, table=True)
    assert [(text[a:b], h) for a, b, h in spans] == [
        ("Format | Note", None), ("pdf | No.", "Format | Note"),
        ("md | Markdown. It is read as text. Links stay.", "Format | Note")]
    long = "A | B\n" + "x | " + "word " * 200
    assert all(b - a <= 400 for a, b, _ in headed_spans(long.strip(), table=True))


def test_a_header_with_an_empty_first_cell_pairs_with_its_rows() -> None:
    row = SentenceDraft(0, 0, "North | 5 | 6", None, (), "| Q1 | Q2")
    assert with_header(row) == "North; Q1: 5; Q2: 6"
    pool = [Candidate(with_header(row), 1, "d", 1, row.header, row.text)]
    assert [sorted(name) for name, _ in pool[0].cells] == [[], ["q1"], ["q2"]]


def test_bm25_finds_a_row_by_its_header() -> None:
    rows = [s for s in sentences() if s.header]
    scores = bm25_scores("Which extension has Markdown?", [with_header(s) for s in rows])
    assert scores.argmax() == 2
    assert bm25_scores("extension", [s.text for s in rows]).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("question", "listing"), [
    ("Which formats can I upload?", True), ("What file types are supported?", True),
    ("What are the job states?", True), ("List the endpoints.", True),
    ("Tell me all the supported formats.", True), ("Give me the supported formats.", True),
    ("Name the supported formats.", True),
    ("Which port does the server listen on?", False),
    ("What does the cancelled state mean?", False), ("What happens when Redis is down?", False),
    ("Which status code means too large?", False), ("How many rows are there?", False),
    ("What are embeddings?", False),
    ("What are the main differences between BM25 and dense retrieval?", False),
    ("Name the author.", False), ("Name of the default model?", False),
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
    # One whose header names it but none of whose rows is close to the question stays out too.
    weak = scored(prose + [s for s in items if s.header], dense=0.1)
    assert with_table_rows("Which formats can I upload?", weak[:2], weak) == weak[:2]


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
    # It fails because no row holds either item, not for want of a table window.
    assert item_rows("You can upload JPEG and TIFF images.", pool, [content_words(question)],
                     question, 0.5) is None
    assert item_rows(answer, pool, [content_words(question)], question, 0.5) == (0, 1, 2)


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


OPS = "Variable | Default | Meaning"
OPS_ROWS = ["RAG_DATA_DIR | data | directory for uploads and the index",
            "RAG_HOST | 127.0.0.1 | address the server binds to",
            "RAG_PORT | 8000 | port the server listens on",
            "RAG_MAX_FILE_BYTES | 100 MB | largest file accepted",
            "RAG_CACHE_SIZE | 1024 | answers kept by the in-process cache",
            "RAG_WORKERS | 50 | workers that parse uploads"]
FORMATS = "Extension | Format"
FORMAT_ROWS = [".pdf | PDF with a text layer", ".md | Markdown", ".png | PNG images, read with OCR"]
STATES = "State | Meaning"
STATE_ROWS = ["queued | accepted and waiting for a worker",
              "done | the document is indexed and can be cited",
              "cancelled | the document was deleted before the job finished"]


def _judge(question: str, header: str, rows: list[str]) -> Judge:
    items = [Sentence(n, "doc", n * 100, n * 100 + len(r), r, header=header)
             for n, r in enumerate(rows, start=1)]
    pool = _pool(items)
    return Judge(question, pool, {1: " ".join(c.text for c in pool)}, 0.5)


@pytest.mark.parametrize(("question", "header", "rows", "answer"), [
    ("Which port does the server listen on by default?", OPS, OPS_ROWS,
     "The server listens on port 50 by default."),
    ("What is the largest file accepted?", OPS, OPS_ROWS, "The largest file accepted is 8000 MB."),
    ("Which formats can I upload?", FORMATS, FORMAT_ROWS, "PDF files are read with OCR."),
    ("Which formats can I upload?", FORMATS, FORMAT_ROWS, "PDF and Markdown are read with OCR."),
    ("What are the environment variables?", OPS, OPS_ROWS,
     "RAG_PORT sets the directory for uploads and RAG_HOST the largest file."),
])
def test_a_sentence_mixing_the_facts_of_rows_fails(
        question: str, header: str, rows: list[str], answer: str) -> None:
    assert not _judge(question, header, rows).verdict(answer).passed


def test_each_item_of_a_list_is_supported_by_its_own_row() -> None:
    judge = _judge("Which formats can I upload?", FORMATS, FORMAT_ROWS)
    verdict = judge.verdict("You can upload PDF, Markdown and PNG images [1].")
    assert verdict.passed
    assert judge.support(verdict) == (0, 1, 2)  # every row that supports an item
    # One row shown alone answers a list by its header too, but only with what it holds.
    alone = _judge("Which formats can I upload?", FORMATS, FORMAT_ROWS[1:2])
    assert alone.verdict("You can upload Markdown files [1].").passed
    assert not alone.verdict("You can upload Markdown and PDF files [1].").passed
    # Not a list question: no row holds it all, and rows do not support it together.
    one = _judge("Which format is read with OCR?", FORMATS, FORMAT_ROWS)
    assert not one.verdict("PDF and PNG images are read with OCR [1].").passed
    assert one.verdict("PNG images are read with OCR [1].").passed


def test_header_words_do_not_anchor_a_row() -> None:
    judge = _judge("What does the cancelled job state mean?", STATES, STATE_ROWS)
    # The question's column words (State, Meaning) are in every row's header.
    assert not judge.verdict("Cancelled means the document is indexed and can be cited.").passed
    assert judge.verdict("It means the document was deleted before the job finished [1].").passed


def test_a_column_whose_cell_the_question_names_is_not_asked_for() -> None:
    judge = _judge("What does the cache size variable do?", OPS, OPS_ROWS)
    assert judge.verdict("It sets the answers kept by the in-process cache [1].").passed
    port = _judge("Which port does the server listen on by default?", OPS, OPS_ROWS)
    assert port.verdict("The server listens on port 8000 by default [1].").passed
    assert not port.verdict("RAG_PORT is the variable [1].").passed  # its Default is asked
    # The column "which X" names is asked for even where the question says part of its cell.
    variable = _judge("Which variable sets the port of the server?", OPS, OPS_ROWS)
    assert variable.verdict("RAG_PORT sets the port of the server [1].").passed
    assert not variable.verdict("The port of the server is set to 8000 [1].").passed


def test_a_list_question_gets_no_short_answer() -> None:
    items = sentences()
    result = _declined("Which formats can I upload?",
                       tuple(scored([*items[3:6], items[0]], dense=0.6)))
    assert result.mode == "quote"
    short = ShortAnswerStage(CheckStage(0.5, "quote")).run(result)
    with pytest.raises(StopIteration) as end:
        next(short)
    assert end.value.value.short_answer is None


def test_a_list_in_prose_keeps_its_short_answer() -> None:
    """Only a list answered from table rows loses its short answer; "Navy Blue and Gold" is one."""
    from rag.ask.short import lists_table_rows

    items = sentences()
    rows = _declined("Which formats can I upload?",
                     tuple(scored([*items[3:6], items[0]], dense=0.6)))
    assert lists_table_rows(rows)
    prose = _declined("Which formats can I upload?", tuple(scored([items[0]], dense=0.6)))
    assert not lists_table_rows(prose)


def _declined(question: str, shown: tuple[ScoredSentence, ...]) -> AskContext:
    """What the check stage answers when the model declined, `shown` being the evidence."""
    text, _ = drafts()
    chunk = ScoredChunk(Chunk(1, "doc", 0, text, 0, len(text)), 1.0, filename="ingestion.md")
    prompt = Prompt((), (), (chunk,), (), 0, 0, evidence=(shown,))
    ctx = AskContext(Query(question), prompt=prompt, evidence=Evidence(shown, ((chunk, shown),)),
                     generated="The documents do not contain this.")
    stage = CheckStage(0.5, "quote").run(ctx)
    with pytest.raises(StopIteration) as end:
        next(stage)
    result: AskContext = end.value.value
    return result


def test_a_declined_list_question_is_answered_with_the_rows() -> None:
    text, _ = drafts()
    items = sentences()
    result = _declined("Which formats can I upload?",
                       tuple(scored([*items[3:6], items[0]], dense=0.6)))
    assert result.mode == "quote"
    # The header line first, then each row on a line of its own, each with its source.
    assert result.text.splitlines() == [f'"{HEADER}" [1]', *(f'"{row}" [1]' for row in ROWS)]
    assert [q.text for q in result.quotes[:3]] == ROWS
    assert all(text[q.start : q.end] == q.text for q in result.quotes)


def test_a_declined_list_question_abstains_when_no_row_is_close() -> None:
    items = sentences()
    result = _declined("Which formats can I upload?",
                       tuple(scored([*items[3:6], items[0]], dense=0.3)))
    assert result.mode == "abstained"


def test_a_header_naming_what_is_asked_lowers_the_floor_for_its_rows() -> None:
    """Rows at cosine 0.4 (under min_quote_score 0.5) are quoted when the header names the
    question's key term ("formats", "Format"), and not when it does not."""
    items = sentences()
    rows = tuple(scored([*items[3:6], items[0]], dense=0.4))
    assert _declined("Which formats can I upload?", rows).mode == "quote"
    assert _declined("Which tools can I install?", rows).mode == "abstained"


def test_a_long_table_is_quoted_in_part_and_says_so() -> None:
    header = "Code | Meaning"
    rows = [Sentence(n, "doc", n * 20, n * 20 + 9, f"E{n:03d} | x{n}", header=header)
            for n in range(1, 12)]
    result = _declined("Which codes are there?", tuple(scored(rows, dense=0.6)))
    lines = result.text.splitlines()
    assert lines[0] == f'"{header}" [1]'
    assert lines[1:-1] == [f'"{r.text}" [1]' for r in rows[:MAX_QUOTED_ROWS]]
    assert lines[-1] == f"({MAX_QUOTED_ROWS} of 11 rows)"


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

"""The answer check: claims against evidence, and what each policy answers."""

from __future__ import annotations

import pytest

from rag.ask.check import CheckStage
from rag.ask.claims import Candidate, check_sentence, content_words, facts
from rag.ask.context import AskContext
from rag.types import (
    NO_ANSWER,
    Chunk,
    Evidence,
    Prompt,
    Query,
    ScoredChunk,
    ScoredSentence,
    Sentence,
)

SOURCE = ("Super Bowl 50 was played on February 7, 2016, at Levi's Stadium. "
          "The Denver Broncos defeated the Carolina Panthers 24-10. "
          "Gary Kubiak was the head coach of the Broncos.")
QUESTION = "Who was the head coach of the Broncos?"


def _sentences() -> list[Sentence]:
    out, start = [], 0
    for i, text in enumerate(SOURCE.split(". ")):
        text = text if text.endswith(".") else text + "."
        start = SOURCE.index(text, start)
        out.append(Sentence(i + 1, "doc", start, start + len(text), text))
        start += len(text)
    return out


def test_facts_are_numbers_and_names() -> None:
    found = facts("Super Bowl 50 was won by Denver on February 7, 2016 [1].")
    assert found == ["50", "7", "2016", "Super", "Bowl", "Denver", "February"]
    assert facts("Yes, it was played there.") == []  # an opening word names nothing


def test_content_words_are_stemmed_without_function_words() -> None:
    assert content_words("The coaches were coaching") == {"coach"}


@pytest.mark.parametrize(
    ("answer", "supported", "missing"),
    [
        ("Gary Kubiak was the head coach of the Broncos [1].", True, ()),
        ("The head coach of the Broncos is Joe Jackson.", False, ("Joe", "Jackson")),
        ("The Broncos won 31-10.", False, ("31-10",)),
        ("The Broncos won the game by 24-10 against the Panthers.", True, ()),
        ("The head coach of the Broncos.", False, ()),  # only echoes the question
    ],
)
def test_check_sentence(answer: str, supported: bool, missing: tuple[str, ...]) -> None:
    pool = [Candidate(s.text, 1) for s in _sentences()]
    check, best = check_sentence(answer, QUESTION, pool, {1: SOURCE}, 0.5)
    assert (check.supported, check.missing) == (supported, missing)
    if supported:
        assert best is not None and pool[best].text in SOURCE


def test_a_claim_must_be_in_the_source_it_cites() -> None:
    pool = [Candidate(SOURCE, 1), Candidate("Ron Rivera coached the Panthers.", 2)]
    sources = {1: SOURCE, 2: "Ron Rivera coached the Panthers."}
    assert check_sentence("Ron Rivera coached the Panthers [2].", QUESTION, pool, sources,
                          0.5)[0].supported
    check, _ = check_sentence("Ron Rivera coached the Panthers [1].", QUESTION, pool, sources,
                              0.5)
    assert not check.supported and check.missing == ("Ron", "Rivera")


def _context(generated: str) -> AskContext:
    sentences = _sentences()
    chunk = Chunk(id=1, document_id="doc", ordinal=0, text=SOURCE, start=0, end=len(SOURCE),
                  page=None, title_path=(), token_count=40)
    scored = ScoredChunk(chunk, 1.0, 0.8, 3.0, "superbowl.txt")
    # Best-ranked first: the coach sentence, then the score, then the date.
    ranked = tuple(ScoredSentence(s, 1.0 / rank, 0.9 - rank / 10, 1.0, 0, rank)
                   for rank, s in enumerate([sentences[2], sentences[1], sentences[0]], start=1))
    evidence = Evidence(ranked, ((scored, tuple(sorted(ranked, key=lambda r: r.sentence.start))),))
    prompt = Prompt(messages=(), input_ids=(1, 2, 3), sources=(scored,), dropped=(),
                    prompt_tokens=3, budget=100, evidence=(evidence.groups[0][1],))
    return AskContext(Query(QUESTION), chunks=(scored,), evidence=evidence, prompt=prompt,
                      generated=generated)


def _check(generated: str, policy: str = "quote", min_quote_score: float = 0.5) -> AskContext:
    stage = CheckStage(0.5, policy, min_quote_score=min_quote_score)  # type: ignore[arg-type]
    runner = stage.run(_context(generated))
    try:
        while True:
            next(runner)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def test_a_supported_answer_is_kept_with_its_quote() -> None:
    ctx = _check("Gary Kubiak was the head coach [1].")
    assert (ctx.mode, ctx.text, ctx.groundedness) == ("generated", ctx.generated, 1.0)
    quote = ctx.quotes[ctx.sentences[0].quote or 0]
    assert quote.text == "Gary Kubiak was the head coach of the Broncos."
    assert SOURCE[quote.start : quote.end] == quote.text
    assert (quote.supports, quote.source, quote.filename) == (1, 1, "superbowl.txt")


def test_an_unsupported_answer_becomes_the_best_quote() -> None:
    ctx = _check("The head coach of the Broncos is Joe Jackson.")
    assert ctx.mode == "quote" and ctx.groundedness == 0.0
    assert ctx.text == '"Gary Kubiak was the head coach of the Broncos." [1]'
    assert ctx.quotes[0].text == "Gary Kubiak was the head coach of the Broncos."
    assert ctx.sentences[0].missing == ("Joe", "Jackson")


def test_unsupported_sentences_are_dropped_when_others_are_supported() -> None:
    ctx = _check("Gary Kubiak was the head coach [1]. He was born in 1901 in Paris.")
    assert ctx.mode == "generated" and ctx.groundedness == 0.5
    assert ctx.text == "Gary Kubiak was the head coach [1]."


def test_flag_keeps_and_drop_abstains() -> None:
    flagged = _check("The head coach is Joe Jackson.", "flag")
    assert flagged.text == "The head coach is Joe Jackson." and flagged.mode == "generated"
    assert not flagged.sentences[0].supported
    dropped = _check("The head coach is Joe Jackson.", "drop")
    assert (dropped.text, dropped.mode) == (NO_ANSWER, "abstained")


def test_the_model_declining_is_an_abstention_unless_the_evidence_is_strong() -> None:
    declined = "The documents do not contain this."  # the best evidence cosine here: 0.8
    weak = _check(declined, min_quote_score=0.85)
    assert (weak.text, weak.mode) == (NO_ANSWER, "abstained")
    strong = _check(declined, min_quote_score=0.75)
    assert strong.mode == "quote" and strong.quotes[0].score == pytest.approx(0.8)
    assert _check(declined, "flag", min_quote_score=0.75).mode == "abstained"


@pytest.mark.parametrize(("answers_question", "mode"), [(False, "generated"), (True, "quote")])
def test_the_setting_picks_the_check(answers_question: bool, mode: str) -> None:
    """Super Bowl 50 occurs in the sources but not in the evidence about the coach: the old
    check passes it, the check that asks whether the answer answers quotes instead."""
    stage = CheckStage(0.5, "quote", answers_question=answers_question)
    runner = stage.run(_context("Super Bowl 50 was the head coach of the Broncos [1]."))
    with pytest.raises(StopIteration) as done:
        next(runner)
    ctx: AskContext = done.value.value
    assert ctx.mode == mode
    assert ctx.sentences[0].supported is (mode == "generated")

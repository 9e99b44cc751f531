"""The runner over a scripted target: per-item scores and aggregates computed by hand."""

from __future__ import annotations

from typing import Any

import pytest

from eval.metrics import NO_ANSWER
from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import SuiteItem
from tests.eval.fakes import FakeTarget, Script, suite

Q1 = SuiteItem("q1", "How big is a chunk?", ("200 tokens",), {"a.md": 1})
Q2 = SuiteItem("q2", "Who won the cup?", (), {}, answerable=False)
Q3 = SuiteItem("q3", "Which index?", ("FAISS",), {"b.md": 1})

DEFAULT = RunOptions()
SCRIPTS = {
    Q1.question: Script("It is 200 tokens [1].", cited=[("a.md", "Chunks are 200 tokens.")],
                        retrieved=["b.md", "a.md"], total_ms=100.0),
    Q2.question: Script(NO_ANSWER, total_ms=20.0),
    Q3.question: Script(NO_ANSWER, retrieved=["b.md"], total_ms=300.0),  # a false abstention
}


def _run(target: FakeTarget, *items: SuiteItem, docs: tuple[str, ...] = ("a.md", "b.md"),
         options: RunOptions = DEFAULT) -> dict[str, Any]:
    s = suite(*items, docs=docs)
    corpus = ingest_corpus(s, target, lambda _: None)
    return run_suite(s, target, corpus, options)


def test_items_and_aggregates_by_hand() -> None:
    result = _run(FakeTarget(SCRIPTS), Q1, Q2, Q3)
    rows = {row["id"]: row for row in result["items"]}
    q1 = rows["q1"]["scores"]
    assert (q1["hit@1"], q1["hit@3"], q1["mrr"], q1["recall@5"]) == (0.0, 1.0, 0.5, 1.0)
    assert (q1["contains"], q1["exact_match"], q1["shown_text_overlap"]) == (1.0, 0.0, 1.0)
    # "it is 200 tokens" against "200 tokens": P = 2/4, R = 1 -> F1 = 2/3
    assert q1["f1"] == pytest.approx(2 / 3)
    assert rows["q1"]["ranking_source"] == "retriever@2"
    assert rows["q2"]["abstained"] and rows["q2"]["scores"]["hit@1"] is None
    assert rows["q3"]["scores"]["shown_text_overlap"] is None  # abstained: nothing to ground
    # No evidence and no checked sentences (what an older server answers):
    assert (q1["evidence_contains"], q1["answer_groundedness"]) == (0.0, None)

    agg = result["aggregates"]
    quality = agg["quality"]
    assert quality["hit@1"] == 0.5  # q1 0, q3 1
    assert quality["mrr"] == 0.75  # (1/2 + 1) / 2
    assert quality["contains"] == 0.5  # q1 1, q3 0
    assert quality["shown_text_overlap"] == 1.0  # only q1 answered
    assert quality["abstention_precision"] == 0.5  # abstained on q2 (right) and q3 (wrong)
    assert quality["abstention_recall"] == 1.0
    assert agg["abstention"]["false_abstentions"] == 1
    assert agg["latency_ms"]["total"]["p50"] == 100.0
    assert agg["latency_ms"]["total"]["max"] == 300.0
    assert agg["cache_hit_rate"] == 0.0
    # only q1 generates: 10 tokens in 85 ms (the abstentions generate none)
    assert agg["tokens_per_second"] == pytest.approx(10 / 0.085)
    assert result["git_commit"] is None or isinstance(result["git_commit"], str)
    assert result["index_version"] == 3


def test_citations_rank_when_the_target_cannot_retrieve() -> None:
    scripts = {Q1.question: Script("200 tokens [2]", cited=[("b.md", "x"), ("a.md", "200 tokens")])}
    row = _run(FakeTarget(scripts), Q1)["items"][0]
    assert row["ranking_source"] == "citations"
    assert (row["scores"]["hit@1"], row["scores"]["mrr"]) == (0.0, 0.5)
    # Groundedness looks at the cited source [2] only.
    assert row["scores"]["shown_text_overlap"] == 1.0


def test_an_error_is_kept_on_its_item() -> None:
    scripts = dict(SCRIPTS) | {Q3.question: Script("", fail=True)}
    result = _run(FakeTarget(scripts), Q1, Q2, Q3, options=RunOptions(concurrency=3))
    rows = {row["id"]: row for row in result["items"]}
    assert rows["q3"]["error"] == "RuntimeError: the service went away"
    assert result["aggregates"]["errors"] == 1
    assert result["aggregates"]["quality"]["hit@1"] == 0.0


def test_cached_answers_have_their_own_latency() -> None:
    scripts = {Q1.question: Script("200 tokens", total_ms=400.0),
               Q3.question: Script("FAISS", total_ms=2.0, cached=True)}
    agg = _run(FakeTarget(scripts), Q1, Q3)["aggregates"]
    assert agg["cache_hit_rate"] == 0.5
    assert agg["latency_ms"]["total"]["max"] == 400.0
    assert agg["cached_latency_ms"]["p50"] == 2.0


def test_documents_with_the_same_bytes_share_one_key() -> None:
    item = SuiteItem("q", "Which one?", ("x",), {"copy/a2.md": 1})
    target = FakeTarget({item.question: Script("x", retrieved=["a.md"])},
                        same_bytes={"copy/a2.md": "a.md"})
    row = _run(target, item, docs=("a.md", "copy/a2.md"))["items"][0]
    assert dict(row["relevant"]) == {"a.md": 1}
    assert row["scores"]["hit@1"] == 1.0


def test_limit_and_options_are_recorded() -> None:
    result = _run(FakeTarget(SCRIPTS), Q1, Q2, Q3, options=RunOptions(top_k=3, limit=2))
    assert [row["id"] for row in result["items"]] == ["q1", "q2"]
    assert result["options"] == {"top_k": 3, "concurrency": 1, "limit": 2,
                                 "retrieval_only": False, "skip": 0, "history": "own"}
    sliced = _run(FakeTarget(SCRIPTS), Q1, Q2, Q3, options=RunOptions(skip=1, limit=1))
    assert [row["id"] for row in sliced["items"]] == ["q2"] and sliced["suite"]["items"] == 1


def test_retrieval_only_asks_nothing() -> None:
    result = _run(FakeTarget(SCRIPTS), Q1, Q2, Q3, options=RunOptions(retrieval_only=True))
    rows = {row["id"]: row for row in result["items"]}
    assert not rows["q1"]["asked"] and rows["q1"]["answer"] == ""
    assert rows["q1"]["scores"]["mrr"] == 0.5 and "contains" not in rows["q1"]["scores"]
    assert rows["q2"]["error"] == "ValueError: fake cannot retrieve without answering."
    quality = result["aggregates"]["quality"]
    assert quality["mrr"] == 0.75 and quality["contains"] is None
    assert quality["abstention_recall"] is None  # nothing was asked
    assert result["aggregates"]["latency_ms"]["first_token"] is None


Q4 = SuiteItem("q4", "Which port?", ("8000",), {"a.md": 1})
EVIDENCE_SCRIPTS = {
    # generated and checked: its reference is in the second quote only
    Q1.question: Script("It is 200 tokens [1].", checked=[True], prompt_tokens=120,
                        evidence=[("b.md", "Chunks overlap."), ("a.md", "Chunks are 200 tokens.")]),
    Q2.question: Script(NO_ANSWER, mode="abstained", prompt_tokens=0),  # no prompt: not counted
    # unsupported, so answered with a quote; the reference is in the first quote
    Q3.question: Script('"The index is FAISS." [1]', mode="quote", checked=[False],
                        generated_text="It is Annoy.", prompt_tokens=80,
                        evidence=[("b.md", "The index is FAISS.")]),
    # a repeated sentence, half supported, and evidence without the reference
    Q4.question: Script("Port 8000 [1]. Port 8000.", checked=[True, False], prompt_tokens=100,
                        evidence=[("a.md", "Use port 9000.")]),
}


def test_evidence_modes_and_prompt_tokens_by_hand() -> None:
    result = _run(FakeTarget(EVIDENCE_SCRIPTS), Q1, Q2, Q3, Q4)
    rows = {row["id"]: row for row in result["items"]}
    evidence = ("evidence_contains", "evidence_hit@1", "evidence_hit@3", "answer_groundedness")
    assert [rows["q1"]["scores"][k] for k in evidence] == [1.0, 0.0, 1.0, 1.0]
    assert [rows["q3"]["scores"][k] for k in evidence] == [1.0, 1.0, 1.0, 0.0]
    assert [rows["q4"]["scores"][k] for k in evidence] == [0.0, 0.0, 0.0, 0.5]
    assert [rows["q2"]["scores"][k] for k in evidence] == [None] * 4  # unanswerable, abstained
    assert [r["repeats_sentence"] for r in result["items"]] == [False, False, False, True]
    assert (rows["q3"]["mode"], rows["q3"]["generated_text"]) == ("quote", "It is Annoy.")
    quote = rows["q1"]["evidence"][1]
    assert (quote["document"], quote["source"], quote["text"]) == ("a.md", 2,
                                                                   "Chunks are 200 tokens.")

    agg = result["aggregates"]
    quality = agg["quality"]
    assert quality["evidence_contains"] == pytest.approx(2 / 3)  # q1, q3 of q1, q3, q4
    assert quality["evidence_hit@1"] == pytest.approx(1 / 3)  # q3
    assert quality["evidence_hit@3"] == pytest.approx(2 / 3)
    assert quality["answer_groundedness"] == 0.5  # (1 + 0 + 0.5) / 3
    assert agg["modes"] == {"generated": 0.5, "quote": 0.25, "abstained": 0.25}
    assert agg["repeated_sentence_answers"] == 1
    assert agg["prompt_tokens"]["p50"] == 100.0  # of 120, 80, 100
    assert agg["prompt_tokens"]["count"] == 3
    assert quality["abstention_precision"] == 1.0 and quality["abstention_recall"] == 1.0


def test_the_service_mode_counts_as_abstention() -> None:
    scripts = {Q2.question: Script("Sorry, nothing found.", mode="abstained")}
    row = _run(FakeTarget(scripts), Q2)["items"][0]
    assert row["abstained"] and row["mode"] == "abstained"


def test_follow_up_turns_are_scored_with_and_without_history() -> None:
    from rag.types import Turn

    first = SuiteItem("c1.1", "Which index?", ("FAISS",), {"b.md": 1}, conversation="c1")
    later = SuiteItem("c1.2", "How big is it?", ("50,000",), {"b.md": 1},
                      history=(Turn("Which index?", "FAISS"),), conversation="c1", turn=2)
    scripts = {
        first.question: Script("FAISS [1].", retrieved=["b.md", "a.md"]),
        later.question: Script("Big.", retrieved=["a.md", "a.md", "a.md", "b.md"],
                               with_history=["b.md", "a.md"]),
    }
    result = _run(FakeTarget(scripts), first, later, options=RunOptions(retrieval_only=True))
    rows = {row["id"]: row for row in result["items"]}
    assert rows["c1.2"]["scores"]["hit@1"] == 1.0 and rows["c1.2"]["scores"]["alone_hit@1"] == 0.0
    assert rows["c1.2"]["scores"]["alone_mrr"] == 0.5  # documents: a.md, b.md
    assert "alone_hit@1" not in rows["c1.1"]["scores"]
    followup = result["aggregates"]["followup"]
    assert followup["turns"] == 1
    assert (followup["with_history_hit@1"], followup["without_history_hit@1"]) == (1.0, 0.0)
    assert result["aggregates"]["turns"]["2"] == {"items": 1, "hit@3": 1.0}


def _conversation() -> tuple[SuiteItem, ...]:
    """Three turns with the reference answers as their suite history (as jsonl suites have)."""
    from rag.types import Turn

    one = SuiteItem("c1.1", "Which index?", ("FAISS",), {"b.md": 1}, conversation="c1")
    two = SuiteItem("c1.2", "How big is it?", ("50,000",), {"b.md": 1}, conversation="c1",
                    turn=2, history=(Turn("Which index?", "FAISS"),))
    three = SuiteItem("c1.3", "Who made it?", ("Meta",), {"a.md": 1}, conversation="c1", turn=3,
                      history=(*two.history, Turn("How big is it?", "50,000")))
    return one, two, three


CONVERSATION_SCRIPTS = {
    "Which index?": Script("An index of vectors [1].", retrieved=["b.md"]),
    "How big is it?": Script("Large [1].", retrieved=["a.md", "b.md"]),
    "Who made it?": Script("A lab [1].", retrieved=["a.md"]),
}


@pytest.mark.parametrize("retrieval_only", [True, False])
def test_follow_ups_are_asked_after_the_targets_own_answers(retrieval_only: bool) -> None:
    """The reference answers never reach the target: each turn runs after the one before it
    and carries the answers the target gave (a retrieval-only run asks the earlier turns for
    them, unscored), however many conversations run side by side."""
    from rag.types import Turn

    one, two, three = _conversation()
    target = FakeTarget(CONVERSATION_SCRIPTS)
    options = RunOptions(retrieval_only=retrieval_only, concurrency=3)
    result = _run(target, three, one, two, options=options)  # the suite's order is kept
    assert [r["id"] for r in result["items"]] == ["c1.3", "c1.1", "c1.2"]
    own = (Turn("Which index?", "An index of vectors [1]."),
           Turn("How big is it?", "Large [1]."))
    with_history = [(q, h) for kind, q, h in target.calls if h]
    assert set(with_history) == {("How big is it?", own[:1]), ("Who made it?", own)}
    assert not any("FAISS" in t.answer or "50,000" in t.answer
                   for _, _, history in target.calls for t in history)
    rows = {r["id"]: r for r in result["items"]}
    assert [rows[i]["history_source"] for i in ("c1.1", "c1.2", "c1.3")] == ["", "own", "own"]
    assert result["aggregates"]["followup"]["history"] == {"own": 2}
    asks = [q for kind, q, _ in target.calls if kind == "ask"]
    # the last turn is asked only when answers are scored: no later turn needs its answer
    assert asks == (["Which index?", "How big is it?", "Who made it?"] if not retrieval_only
                    else ["Which index?", "How big is it?"])
    assert not rows["c1.1"]["asked"] if retrieval_only else rows["c1.1"]["asked"]


def test_the_reference_history_is_a_labelled_upper_bound() -> None:
    one, two, three = _conversation()
    target = FakeTarget(CONVERSATION_SCRIPTS)
    result = _run(target, one, two, three,
                  options=RunOptions(retrieval_only=True, history="reference"))
    assert [kind for kind, _, _ in target.calls].count("ask") == 0
    assert {(q, h) for _, q, h in target.calls if h} == {("How big is it?", two.history),
                                                         ("Who made it?", three.history)}
    assert result["aggregates"]["followup"]["history"] == {"reference": 2}
    assert result["options"]["history"] == "reference"


def test_a_follow_up_without_its_earlier_turns_keeps_the_suites_history() -> None:
    """Exported feedback holds what the service really answered before: kept as given."""
    _, two, _ = _conversation()
    target = FakeTarget(CONVERSATION_SCRIPTS)
    result = _run(target, two, options=RunOptions(retrieval_only=True))
    assert {(q, h) for _, q, h in target.calls if h} == {("How big is it?", two.history)}
    assert result["items"][0]["history_source"] == "suite"


def test_check_precision_counts_the_answers_passed_as_generated() -> None:
    """Of the answers the service passed as generated (not quotes, not abstentions), the share
    that hold a reference: q1 does, q4 ("Port 9000") does not; q3 was quoted."""
    scripts = {
        Q1.question: Script("It is 200 tokens [1].", checked=[True]),
        Q3.question: Script('"The index is FAISS." [1]', mode="quote", checked=[False]),
        Q4.question: Script("Use port 9000 [1].", checked=[True]),
        Q2.question: Script(NO_ANSWER, mode="abstained"),
    }
    quality = _run(FakeTarget(scripts), Q1, Q2, Q3, Q4)["aggregates"]["quality"]
    assert quality["check_precision"] == 0.5


def test_short_answers_are_scored_where_there_is_one() -> None:
    """Exact match and F1 of the short answer where one was given; what is shown first (the
    short answer, else the answer) on every answer; the share of answers with one."""
    scripts = {
        Q1.question: Script("It is 200 tokens [1].", short="200 tokens"),
        Q3.question: Script("The index is FAISS with flat vectors [1].", short="flat vectors"),
        Q4.question: Script("Use port 8000 [1].", checked=[True]),
        Q2.question: Script(NO_ANSWER, mode="abstained", short="ignored"),
    }
    result = _run(FakeTarget(scripts), Q1, Q2, Q3, Q4)
    rows = {row["id"]: row for row in result["items"]}
    assert rows["q1"]["short_answer"] == "200 tokens" and rows["q2"]["short_answer"] is None
    q1, q3, q4 = (rows[q]["scores"] for q in ("q1", "q3", "q4"))
    assert (q1["short_exact_match"], q1["short_f1"]) == (1.0, 1.0)
    assert (q3["short_exact_match"], q3["short_f1"]) == (0.0, 0.0)
    assert (q4["short_exact_match"], q4["short_f1"]) == (None, None)
    # "use port 8000" against "8000": P = 1/3, R = 1 -> F1 = 1/2
    assert (q4["first_shown_exact_match"], q4["first_shown_f1"]) == (0.0, pytest.approx(0.5))
    quality = result["aggregates"]["quality"]
    assert quality["short_exact_match"] == 0.5 and quality["short_f1"] == 0.5
    assert quality["first_shown_f1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert quality["short_answer_rate"] == pytest.approx(2 / 3)

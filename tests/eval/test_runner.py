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
    assert (q1["contains"], q1["exact_match"], q1["groundedness"]) == (1.0, 0.0, 1.0)
    # "it is 200 tokens" against "200 tokens": P = 2/4, R = 1 -> F1 = 2/3
    assert q1["f1"] == pytest.approx(2 / 3)
    assert rows["q1"]["ranking_source"] == "retriever@2"
    assert rows["q2"]["abstained"] and rows["q2"]["scores"]["hit@1"] is None
    assert rows["q3"]["scores"]["groundedness"] is None  # abstained: nothing to ground

    agg = result["aggregates"]
    quality = agg["quality"]
    assert quality["hit@1"] == 0.5  # q1 0, q3 1
    assert quality["mrr"] == 0.75  # (1/2 + 1) / 2
    assert quality["contains"] == 0.5  # q1 1, q3 0
    assert quality["groundedness"] == 1.0  # only q1 answered
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
    assert row["scores"]["groundedness"] == 1.0


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
                                 "retrieval_only": False}


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

"""Every metric against values computed by hand."""

from __future__ import annotations

import math

import pytest

from eval import metrics as m

RANKING = ["a", "b", "a", "c", "d"]  # documents of the cited chunks, best first; "a" twice
GRADES = {"c": 1, "e": 1, "b": 0}  # "b" judged but not relevant


def test_hit_at_k() -> None:
    assert m.hit_at_k(RANKING, GRADES, 1) == 0.0
    assert m.hit_at_k(RANKING, GRADES, 2) == 0.0
    # Repeats are dropped first: a, b, c -> c is third.
    assert m.hit_at_k(RANKING, GRADES, 3) == 1.0
    assert m.hit_at_k(RANKING, {"b": 0}, 3) is None


def test_recall_at_k() -> None:
    assert m.recall_at_k(RANKING, GRADES, 1) == 0.0
    assert m.recall_at_k(RANKING, GRADES, 3) == 0.5
    assert m.recall_at_k(RANKING, GRADES, 10) == 0.5
    assert m.recall_at_k(["e", "c"], GRADES, 2) == 1.0
    assert m.recall_at_k(RANKING, {}, 5) is None


def test_reciprocal_rank() -> None:
    assert m.reciprocal_rank(RANKING, GRADES) == pytest.approx(1 / 3)
    assert m.reciprocal_rank(["c"], GRADES) == 1.0
    assert m.reciprocal_rank(["x", "y"], GRADES) == 0.0
    assert m.reciprocal_rank([], {}) is None


def test_ndcg_graded() -> None:
    grades = {"d1": 2, "d2": 1, "d4": 1}
    # DCG = 0/log2(2) + 2/log2(3) + 1/log2(4) = 1.2618595 + 0.5 = 1.7618595
    # IDCG = 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.6309298 + 0.5 = 3.1309298
    assert m.ndcg_at_k(["d3", "d1", "d2"], grades) == pytest.approx(0.562727, abs=1e-6)
    assert m.ndcg_at_k(["d1", "d2", "d4"], grades) == pytest.approx(1.0)
    assert m.ndcg_at_k(["d1", "d1", "d2", "d4"], grades) == pytest.approx(1.0)
    # Cut at k=1: only d3 counts, gain 0.
    assert m.ndcg_at_k(["d3", "d1"], grades, k=1) == 0.0
    assert m.ndcg_at_k(["d3"], {"d3": 0}) is None


def test_normalize_answer_follows_squad() -> None:
    assert m.normalize_answer("The  Cat, an apple & A dog!") == "cat apple dog"
    assert m.normalize_answer("Theory") == "theory"  # "the" only as a word


def test_exact_match() -> None:
    assert m.exact_match("The 202 Accepted.", ["202 accepted", "202"]) == 1.0
    assert m.exact_match("It returns 202.", ["202"]) == 0.0
    assert m.exact_match("202 [1].", ["202"]) == 1.0  # citation markers are not content
    assert m.exact_match("anything", []) is None


def test_token_f1() -> None:
    # "default chunk size is 200 tokens" vs "200 tokens": common 2, P = 2/6, R = 2/2 -> F1 0.5
    assert m.token_f1("The default chunk size is 200 tokens.", ["200 tokens"]) == 0.5
    # The best reference counts: "200" gives P = 1/6, R = 1 -> 2/7.
    assert m.token_f1("The default chunk size is 200 tokens.", ["200"]) == pytest.approx(2 / 7)
    assert m.token_f1("no overlap here", ["200"]) == 0.0
    assert m.token_f1("200 tokens [3]", ["200 tokens"]) == 1.0
    assert m.token_f1("x", []) is None


def test_contains_reference() -> None:
    assert m.contains_reference("It is the RAG_REDIS_URL setting.", ["rag_redis_url"]) == 1.0
    assert m.contains_reference("Set RAG REDIS URL.", ["RAG_REDIS_URL"]) == 0.0
    assert m.contains_reference("The answer is SSE [1].", ["Server-Sent Events", "SSE"]) == 1.0
    assert m.contains_reference("It uses 2000 tokens.", ["200"]) == 0.0  # whole words only
    assert m.contains_reference("x", []) is None


def test_contains_reference_punctuation_in_reference() -> None:
    # SQuAD normalization drops "_" and "-", joining the words on both sides alike.
    assert m.contains_reference("Set RAG_REDIS_URL.", ["RAG_REDIS_URL"]) == 1.0
    assert m.contains_reference("Use --fail-on-drop 0.1", ["--fail-on-drop"]) == 1.0


def test_overlap_groundedness() -> None:
    answer = "The default chunk size is 200 tokens [1]."
    span = "Chunks are 200 tokens long by default."
    # content tokens: default chunk size 200 tokens ("is" is a stopword, [1] is dropped);
    # found in the span: default, 200, tokens -> 3 / 5
    assert m.overlap_groundedness(answer, [span]) == pytest.approx(0.6)
    assert m.overlap_groundedness(answer, [span, "the chunk size"]) == 1.0
    assert m.overlap_groundedness(answer, []) == 0.0
    assert m.overlap_groundedness("It is the [2].", [span]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 200 tokens. It is 200 tokens.", True),
        # citation markers, case, punctuation and articles do not make a sentence new
        ("Chunks are 200 tokens [1]! chunks are the 200 tokens [2].", True),
        ("A loop.\nB.\nA loop", True),
        ("It is 200 tokens. It is 300 tokens.", False),  # a near-repeat is not a repeat here
        ("It is 200 tokens [1]. [2]", False),  # a bare marker is no sentence
        ("", False),
    ],
)
def test_repeats_sentence(text: str, expected: bool) -> None:
    assert m.repeats_sentence(text) is expected


def test_evidence_contains_and_hit_at_k() -> None:
    quotes = ["Chunks overlap by 20 tokens.", "The default chunk size is 200 tokens."]
    references = ["200 tokens", "two hundred tokens"]
    assert m.evidence_contains(quotes, references) == 1.0
    assert m.evidence_contains(quotes, references, 1) == 0.0  # only the first quote
    assert m.evidence_contains(quotes, references, 3) == 1.0  # k past the end: all quotes
    assert m.evidence_contains(["a 2000 tokens window"], references) == 0.0  # whole words
    assert m.evidence_contains([], references) == 0.0  # no evidence: a miss
    assert m.evidence_contains(quotes, []) is None  # nothing to find


def test_cited_numbers() -> None:
    assert m.cited_numbers("A [1] and B [3][1].") == {1, 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (m.NO_ANSWER, True),
        ("The documents do not contain this.", True),
        ("The sources don't mention SAML.", True),
        ("I cannot answer that from the sources.", True),
        ("There is no information about pricing in the documents.", True),
        ("The default chunk size is 200 tokens [1].", False),
        ("No, OCR is not supported, so it is refused [1].", False),
        ("The service does not support SAML.", False),
    ],
)
def test_is_abstention(text: str, expected: bool) -> None:
    assert m.is_abstention(text) is expected


def test_abstention_precision_recall() -> None:
    abstained = [True, True, False, False, True]
    answerable = [False, True, False, True, True]
    # right abstentions: item 0 only; abstained 3 times; 2 unanswerable items.
    result = m.abstention(abstained, answerable)
    assert result.precision == pytest.approx(1 / 3)
    assert result.recall == 0.5
    assert (result.abstained, result.unanswerable) == (3, 2)
    none = m.abstention([False, False], [True, True])
    assert none.precision is None and none.recall is None
    with pytest.raises(ValueError):
        m.abstention([True], [True, False])


def test_latency_percentiles() -> None:
    result = m.latency([10.0, 20.0, 30.0, 40.0, 100.0])
    assert result is not None
    assert result.p50 == 30.0
    assert result.p95 == pytest.approx(88.0)  # 40 + 0.8 * (100 - 40)
    assert (result.max, result.mean, result.count) == (100.0, 40.0, 5)
    assert m.latency([]) is None


def test_tokens_per_second_and_rates() -> None:
    assert m.tokens_per_second(50, 2000.0) == 25.0
    assert m.tokens_per_second(0, 2000.0) is None
    assert m.overall_tokens_per_second([10, 30], [1000.0, 1000.0]) == 20.0
    assert m.rate([True, False, False, False]) == 0.25
    assert m.rate([]) is None


def test_mean_skips_undefined() -> None:
    assert m.mean([1.0, None, 0.0]) == 0.5
    assert m.mean([None]) is None
    assert math.isclose(m.mean([1 / 3, 2 / 3]) or 0, 0.5)

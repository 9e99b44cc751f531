"""Evaluation metrics as pure functions: one score per item, and means over items.

Retrieval metrics take a ranking of document keys (best first) and the relevant documents
with their grades. Answer metrics take the answer text and the reference answers and use
SQuAD's normalization. A score of None means "not defined for this item" (e.g. F1 of an item
without references) and is left out of means.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

from rag.types import NO_ANSWER

K_VALUES = (1, 3, 5, 10)

# The engine's abstention and the few ways a small model says the same in its own words.
_ABSTENTION = re.compile(
    "|".join([
        re.escape(NO_ANSWER.lower().rstrip(".")),
        r"\b(?:do|does|did) not (?:contain|mention|say)\b",
        r"\b(?:don't|doesn't) (?:contain|mention|say)\b",
        r"\bdo(?:es)? not (?:provide|give) (?:an? |any )?(?:answer|information)\b",
        r"\b(?:no|not enough) information (?:about|on|in|to)\b",
        r"\b(?:cannot|can't|unable to) (?:answer|find)\b",
        r"\bnot (?:mentioned|stated|specified) in the (?:sources|documents|context)\b",
        r"\bi don't know\b",
    ])
)
_CITATION_MARK = re.compile(r"\[(\d+)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)

Grades = Mapping[str, int]


# --- helpers ------------------------------------------------------------------------------


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values; None when none is defined."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def distinct(ranking: Sequence[str]) -> list[str]:
    """The ranking with repeats removed, keeping first occurrences (chunks -> documents)."""
    return list(dict.fromkeys(ranking))


def _relevant(grades: Grades) -> set[str]:
    return {key for key, grade in grades.items() if grade > 0}


# --- retrieval ----------------------------------------------------------------------------


def hit_at_k(ranking: Sequence[str], grades: Grades, k: int) -> float | None:
    """1.0 when a relevant document is among the first k; None without relevant documents."""
    relevant = _relevant(grades)
    if not relevant:
        return None
    return 1.0 if relevant.intersection(distinct(ranking)[:k]) else 0.0


def recall_at_k(ranking: Sequence[str], grades: Grades, k: int) -> float | None:
    """Share of the relevant documents found among the first k."""
    relevant = _relevant(grades)
    if not relevant:
        return None
    return len(relevant.intersection(distinct(ranking)[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], grades: Grades) -> float | None:
    """1 / rank of the first relevant document (0.0 when none is retrieved); MRR is the mean."""
    relevant = _relevant(grades)
    if not relevant:
        return None
    for rank, key in enumerate(distinct(ranking), start=1):
        if key in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranking: Sequence[str], grades: Grades, k: int = 10) -> float | None:
    """Normalized DCG with linear gain, grade / log2(rank + 1), as trec_eval and BEIR compute."""
    ideal_grades = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    if not ideal_grades:
        return None
    gains = [grades.get(key, 0) for key in distinct(ranking)[:k]]
    ideal = _dcg(ideal_grades)
    return _dcg(gains) / ideal


def _dcg(gains: Sequence[float]) -> float:
    discounts = np.log2(np.arange(2, len(gains) + 2))
    return float(np.sum(np.asarray(gains, dtype=np.float64) / discounts))


# --- answers ------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def strip_citations(answer: str) -> str:
    """The answer without its [n] citation markers (syntax, not content)."""
    return _CITATION_MARK.sub(" ", answer)


def exact_match(answer: str, references: Sequence[str]) -> float | None:
    """1.0 when the normalized answer (citation markers removed) equals a normalized reference."""
    if not references:
        return None
    norm = normalize_answer(strip_citations(answer))
    return 1.0 if any(norm == normalize_answer(r) for r in references) else 0.0


def token_f1(answer: str, references: Sequence[str]) -> float | None:
    """SQuAD token F1 against the best-matching reference (citation markers removed)."""
    if not references:
        return None
    predicted = normalize_answer(strip_citations(answer)).split()
    return max(_f1(predicted, normalize_answer(r).split()) for r in references)


def _f1(predicted: list[str], reference: list[str]) -> float:
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def contains_reference(answer: str, references: Sequence[str]) -> float | None:
    """1.0 when a normalized reference appears in the normalized answer as whole words."""
    if not references:
        return None
    padded = f" {normalize_answer(strip_citations(answer))} "
    found = any(f" {normalize_answer(r)} " in padded for r in references if normalize_answer(r))
    return 1.0 if found else 0.0


def content_tokens(text: str) -> list[str]:
    """Normalized tokens that are not stopwords, citation markers removed."""
    return [t for t in normalize_answer(strip_citations(text)).split() if t not in _STOPWORDS]


def cited_numbers(answer: str) -> set[int]:
    """Source numbers the answer cites as [n]."""
    return {int(n) for n in _CITATION_MARK.findall(answer)}


def overlap_groundedness(answer: str, cited_spans: Sequence[str]) -> float | None:
    """Share of the answer's content tokens that occur in the cited spans; None if it has none.

    The evaluation's own measure; the service's check reports `Answer.groundedness` besides.
    """
    tokens = content_tokens(answer)
    if not tokens:
        return None
    support = set(normalize_answer(" ".join(cited_spans)).split())
    return sum(t in support for t in tokens) / len(tokens)


def repeats_sentence(answer: str) -> bool:
    """Whether a sentence (normalized, citation markers removed) occurs twice in the answer."""
    sentences = [normalize_answer(strip_citations(s)) for s in _SENTENCE_END.split(answer)]
    said = [s for s in sentences if s]
    return len(set(said)) < len(said)


# --- evidence -----------------------------------------------------------------------------


def evidence_contains(quotes: Sequence[str], references: Sequence[str], k: int | None = None
                      ) -> float | None:
    """1.0 when one of the first k quotes (all when None) contains a reference; 0.0 without
    quotes; None without references. A quote contains one as `contains_reference` says."""
    if not references:
        return None
    found = any(contains_reference(q, references) for q in quotes[:k])
    return 1.0 if found else 0.0


# --- abstention ---------------------------------------------------------------------------


def is_abstention(answer: str) -> bool:
    """Whether the answer declines: the engine's phrase or a usual way to say the same."""
    return bool(_ABSTENTION.search(" ".join(answer.lower().replace("’", "'").split())))


@dataclass(frozen=True)
class Abstention:
    """Abstention on unanswerable items: precision and recall (None when undefined)."""

    precision: float | None
    recall: float | None
    abstained: int
    unanswerable: int


def abstention(abstained: Sequence[bool], answerable: Sequence[bool]) -> Abstention:
    """Precision: abstentions that were right; recall: unanswerable items abstained on."""
    if len(abstained) != len(answerable):
        raise ValueError("one abstention flag per item")
    right = sum(a and not ok for a, ok in zip(abstained, answerable, strict=True))
    said, should = sum(abstained), sum(not ok for ok in answerable)
    return Abstention(
        precision=right / said if said else None,
        recall=right / should if should else None,
        abstained=said,
        unanswerable=should,
    )


# --- latency and cost ---------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Milliseconds over items: median, 95th percentile, maximum, mean."""

    p50: float
    p95: float
    max: float
    mean: float
    count: int


def latency(values_ms: Sequence[float]) -> Latency | None:
    """Percentiles by numpy's linear interpolation; None for no values."""
    if not values_ms:
        return None
    data = np.asarray(values_ms, dtype=np.float64)
    return Latency(
        p50=float(np.percentile(data, 50)),
        p95=float(np.percentile(data, 95)),
        max=float(data.max()),
        mean=float(data.mean()),
        count=len(data),
    )


def tokens_per_second(tokens: int, milliseconds: float) -> float | None:
    """Generated tokens per second of generation time; None when nothing was generated."""
    if tokens <= 0 or milliseconds <= 0:
        return None
    return tokens / (milliseconds / 1000.0)


def overall_tokens_per_second(
    tokens: Sequence[int], milliseconds: Sequence[float]
) -> float | None:
    """All tokens over all generation time (long answers weigh more than in a mean of rates)."""
    return tokens_per_second(sum(tokens), sum(milliseconds))


def rate(flags: Sequence[bool]) -> float | None:
    """Share of True flags (e.g. cache hits); None for no items."""
    return sum(flags) / len(flags) if flags else None

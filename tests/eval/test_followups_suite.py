"""The followups suite, retrieval only, over the sample corpus: history must help follow-ups,
with the service's own earlier answers as the history (what a user's conversation holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import load_suite
from eval.targets import LocalTarget

pytestmark = pytest.mark.slow

SUITE = Path(__file__).parents[2] / "eval" / "suites" / "followups"


def test_history_beats_the_follow_up_alone(make_service: Any) -> None:
    """43 follow-up turns, hit@1 / hit@3 / MRR measured with the service's own answers:
    0.884 / 1.0 / 0.938; with the reference answers as history (gold terms reach retrieval: an
    upper bound, never the headline): 0.953 / 1.0 / 0.977; each turn alone: 0.651 / 0.953 /
    0.795 (greedy answers and retrieval are deterministic, the margins leave room for small
    changes elsewhere)."""
    suite = load_suite(SUITE)
    target = LocalTarget(make_service(max_new_tokens=64))  # earlier answers stay short
    corpus = ingest_corpus(suite, target, lambda _: None)
    own = run_suite(suite, target, corpus, RunOptions(retrieval_only=True))
    upper = run_suite(suite, target, corpus, RunOptions(retrieval_only=True,
                                                        history="reference"))
    followup, bound = own["aggregates"]["followup"], upper["aggregates"]["followup"]
    print({"own": followup, "reference": bound})
    assert own["aggregates"]["errors"] == 0 and followup["turns"] == 43
    assert followup["history"] == {"own": 43} and bound["history"] == {"reference": 43}
    assert followup["with_history_hit@3"] >= 0.9
    assert followup["with_history_hit@1"] >= followup["without_history_hit@1"] + 0.1
    assert followup["with_history_mrr"] >= followup["without_history_mrr"] + 0.05
    # the same turns alone, whatever the history
    assert followup["without_history_mrr"] == bound["without_history_mrr"]

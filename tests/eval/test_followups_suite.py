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
    """Measured with the service's own answers: MEASURED_OWN; with the reference answers as
    history (gold terms reach retrieval: an upper bound, never the headline): MEASURED_REF;
    each turn alone: MEASURED_ALONE (hit@1, hit@3, MRR; greedy answers and retrieval are
    deterministic, the margins leave room for small changes elsewhere)."""
    suite = load_suite(SUITE)
    target = LocalTarget(make_service(max_new_tokens=64))  # earlier answers stay short
    corpus = ingest_corpus(suite, target, lambda _: None)
    own = run_suite(suite, target, corpus, RunOptions(retrieval_only=True))
    upper = run_suite(suite, target, corpus, RunOptions(retrieval_only=True,
                                                        history="reference"))
    followup, bound = own["aggregates"]["followup"], upper["aggregates"]["followup"]
    print({"own": followup, "reference": bound})
    assert own["aggregates"]["errors"] == 0 and followup["turns"] == 38
    assert followup["history"] == {"own": 38} and bound["history"] == {"reference": 38}
    assert followup["with_history_hit@3"] >= 0.9
    assert followup["with_history_hit@1"] >= followup["without_history_hit@1"] + 0.1
    assert followup["with_history_mrr"] >= followup["without_history_mrr"] + 0.05
    # the same turns alone, whatever the history
    assert followup["without_history_mrr"] == bound["without_history_mrr"]

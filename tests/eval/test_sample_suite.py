"""The CI gate: shipped suites end to end on the packaged models, against their committed
baselines: the whole sample suite (eval/suites/sample/baseline.json) and a fixed slice of the
Notre Dame suite, its last 60 questions (eval/suites/notre-dame/baseline-ci.json), held out
from the first ones its README tunes on.

Regenerate a baseline after an intended change with the same settings as this test:

    rag eval run eval/suites/sample --set top_k=3 --set max_new_tokens=32 \
        --set generator_model=smollm2-135m-instruct --out eval/suites/sample/baseline.json
    rag eval run eval/suites/notre-dame --skip 209 --limit 60 --set top_k=3 \
        --set max_new_tokens=32 --set generator_model=smollm2-135m-instruct \
        --out eval/suites/notre-dame/baseline-ci.json

The gate runs the fast packaged model (the test session's), not the default.

Short answers and three sources keep each run at a few minutes on two CPU cores; decoding is
greedy (temperature 0) over a fresh data dir, so a run repeats the baseline's answers and the
gate can be tight: a metric may drop by one question's worth (1/items) and no more, and a
metric the baseline has may not turn None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eval.compare import compare
from eval.report import read_result, write_html, write_json
from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import load_suite
from eval.targets import LocalTarget

SUITES = Path(__file__).parents[2] / "eval" / "suites"
CI_SETTINGS = {"top_k": 3, "max_new_tokens": 32, "generator_model": "smollm2-135m-instruct"}
# CI machines are shared and noisy: latency is reported but not gated here (None). Set a
# factor (e.g. 1.5) to gate on p95 total latency where the machine is dedicated.
LATENCY_FACTOR: float | None = None


@dataclass(frozen=True)
class Gate:
    folder: str
    baseline: str
    skip: int = 0
    limit: int | None = None

    def options(self) -> RunOptions:
        return RunOptions(skip=self.skip, limit=self.limit)

    def allowed_drop(self, items: int) -> float:
        """One question's worth of a mean over the run's items."""
        return 1 / items


GATES = [Gate("sample", "sample/baseline.json"),
         Gate("notre-dame", "notre-dame/baseline-ci.json", skip=209, limit=60)]


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.folder)
def test_baseline_was_made_with_the_gate_settings(gate: Gate) -> None:
    baseline = read_result(SUITES / gate.baseline)
    assert {k: baseline["settings"][k] for k in CI_SETTINGS} == CI_SETTINGS
    assert baseline["settings"]["temperature"] == 0.0
    assert (baseline["options"]["skip"], baseline["options"]["limit"]) == (gate.skip, gate.limit)
    items = load_suite(SUITES / gate.folder).limited(gate.limit, gate.skip).items
    assert [i["id"] for i in baseline["items"]] == [i.id for i in items]
    assert baseline["aggregates"]["errors"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.folder)
def test_suite_holds_its_baseline(gate: Gate, make_service: Any, tmp_path: Path) -> None:
    target = LocalTarget(make_service(**CI_SETTINGS))
    suite = load_suite(SUITES / gate.folder)
    result = run_suite(suite, target, ingest_corpus(suite, target, lambda _: None),
                       gate.options())
    write_json(result, tmp_path / "result.json")
    write_html(result, tmp_path / "result.html")

    assert result["aggregates"]["errors"] == 0, [i["error"] for i in result["items"]]
    drop = gate.allowed_drop(result["aggregates"]["items"])
    comparison = compare(read_result(SUITES / gate.baseline), result, drop, LATENCY_FACTOR)
    changed = [f"{c.id}: {'; '.join(c.changes)}" for c in comparison.items]
    assert not comparison.failures, "\n".join([*comparison.failures, *changed])

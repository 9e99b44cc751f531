"""Result files, the HTML report, `compare` and the eval CLI, over scripted runs."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eval.cli import eval_app, parse_overrides
from eval.compare import compare
from eval.report import headline, read_result, render_html, worst_items, write_html, write_json
from eval.runner import RunOptions, ingest_corpus, run_suite
from tests.eval.fakes import FakeTarget, suite
from tests.eval.test_runner import EVIDENCE_SCRIPTS, Q1, Q2, Q3, Q4, SCRIPTS


@pytest.fixture()
def result() -> dict[str, Any]:
    target = FakeTarget(SCRIPTS)
    s = suite(Q1, Q2, Q3)
    return run_suite(s, target, ingest_corpus(s, target, lambda _: None), RunOptions())


@pytest.fixture()
def evidence_result() -> dict[str, Any]:
    target = FakeTarget(EVIDENCE_SCRIPTS)
    s = suite(Q1, Q2, Q3, Q4)
    result = run_suite(s, target, ingest_corpus(s, target, lambda _: None), RunOptions())
    return json.loads(json.dumps(result))  # as read back from its file


def _older(result: dict[str, Any]) -> dict[str, Any]:
    """The result as written before the evidence metrics: groundedness under its old name."""
    old = copy.deepcopy(result)
    agg = old["aggregates"]
    for name in ("evidence_contains", "evidence_hit@1", "evidence_hit@3", "answer_groundedness"):
        del agg["quality"][name]
    agg["quality"]["groundedness"] = agg["quality"].pop("shown_text_overlap")
    for key in ("modes", "repeated_sentence_answers", "prompt_tokens", "fresh_answers"):
        del agg[key]
    for item in old["items"]:
        for key in ("mode", "generated_text", "repeats_sentence", "evidence"):
            del item[key]
    return old


def _worse(result: dict[str, Any], contains: float, latency_factor: float) -> dict[str, Any]:
    other = copy.deepcopy(result)
    other["aggregates"]["quality"]["contains"] = contains
    for stage in other["aggregates"]["latency_ms"].values():
        for stat in ("p50", "p95", "max"):
            stage[stat] *= latency_factor
    other["items"][0]["scores"]["contains"] = 0.0
    other["settings"]["top_k"] = 3
    return other


def test_json_round_trip(tmp_path: Path, result: dict[str, Any]) -> None:
    path = tmp_path / "runs" / "r.json"
    write_json(result, path)
    assert read_result(path) == json.loads(json.dumps(result))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation result"):
        read_result(tmp_path / "bad.json")


def test_html_is_self_contained(tmp_path: Path, result: dict[str, Any]) -> None:
    write_html(result, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{200,}'", html)) == 2
    assert not re.search(r"(src|href)=['\"]https?:", html)  # nothing loaded from elsewhere
    assert "Which index?" in html and "text of b.md" in html  # a worst item and its chunks


def test_worst_items_order(result: dict[str, Any]) -> None:
    # q3 abstained on an answerable question (contains 0, f1 0, mrr 1) is worse than q1;
    # q2 abstained rightly and is not listed.
    assert [i["id"] for i in worst_items(result["items"])] == ["q3", "q1"]


def test_html_of_a_retrieval_only_run() -> None:
    target = FakeTarget(SCRIPTS)
    s = suite(Q1, Q3)
    result = run_suite(s, target, ingest_corpus(s, target, lambda _: None),
                       RunOptions(retrieval_only=True))
    html = render_html(json.loads(json.dumps(result)))
    # q1 found its document second (MRR 0.5) and is listed; q3 found it first and is not.
    assert "How big is a chunk?" in html and "Which index?" not in html


def test_html_escapes_text(result: dict[str, Any]) -> None:
    result["items"][0]["answer"] = "<script>alert(1)</script>"
    result["items"][0]["scores"]["contains"] = 0.0
    assert "<script>alert" not in render_html(result)


def test_compare_gates_quality_and_latency(result: dict[str, Any]) -> None:
    same = compare(result, result, fail_on_drop=0.0, latency_factor=1.5)
    assert same.failures == () and same.items == () and same.settings == ()
    worse = _worse(result, contains=0.3, latency_factor=2.0)  # contains 0.5 -> 0.3
    gated = compare(result, worse, fail_on_drop=0.1, latency_factor=1.5)
    assert gated.failures == (
        "contains dropped from 0.500 to 0.300 (more than 0.1)",
        "latency total p95 grew 2.00x (more than 1.5x)",
    )
    assert [d.delta for d in gated.quality if d.name == "contains"] == [pytest.approx(-0.2)]
    assert gated.items[0].id == "q1" and gated.items[0].changes == ("contains 1.00 -> 0.00",)
    assert gated.settings == (("settings.top_k", 5, 3),)
    assert compare(result, worse, fail_on_drop=0.25, latency_factor=None).failures == ()
    assert compare(result, worse).failures == ()


def _cli(*args: str) -> Any:
    return CliRunner().invoke(eval_app, list(args))


def test_cli_compare_exit_codes(tmp_path: Path, result: dict[str, Any]) -> None:
    write_json(result, tmp_path / "a.json")
    write_json(_worse(result, contains=0.3, latency_factor=2.0), tmp_path / "b.json")
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert _cli("compare", a, b).exit_code == 0
    failed = _cli("compare", a, b, "--fail-on-drop", "0.1")
    assert failed.exit_code == 1 and "FAIL" in failed.output and "contains" in failed.output
    no_latency = _cli("compare", a, b, "--fail-on-drop", "0.25", "--no-latency-gate")
    assert no_latency.exit_code == 0, no_latency.output
    assert _cli("compare", a, b, "--fail-on-drop", "0.25").exit_code == 1  # latency 2x > 1.5x
    assert _cli("compare", a, b, "--fail-on-drop", "0.25", "--latency-factor", "3").exit_code == 0
    assert _cli("compare", a, str(tmp_path / "missing.json")).exit_code == 2


def test_cli_run_reports_a_bad_suite(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok?"}\n{"answers": []}\n')
    outcome = _cli("run", str(bad), "--out", str(tmp_path / "r.json"))
    assert outcome.exit_code == 2
    assert "line 2: field 'question' is missing" in " ".join(outcome.output.split())


def test_parse_overrides() -> None:
    assert parse_overrides(["max_new_tokens=32", "RAG_TOP_K=3"]) == {
        "max_new_tokens": "32", "top_k": "3"}
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        parse_overrides(["no_such_setting=1"])
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        parse_overrides(["top_k"])


def test_html_shows_the_evidence_metrics_and_quotes(evidence_result: dict[str, Any]) -> None:
    html = render_html(evidence_result)
    for metric in ("evidence_contains", "evidence_hit@1", "evidence_hit@3",
                   "answer_groundedness", "shown_text_overlap", "mode quote",
                   "answers repeating a sentence", "prompt tokens"):
        assert metric in html, metric
    assert "<td>mode quote</td><td class='num'>0.250</td>" in html
    assert "<td>prompt tokens (not ms)</td><td class='num'>100</td>" in html
    # q4 (no reference in its evidence) is among the worst, with its mode and its quote
    q4 = html[html.index("<b>q4</b>"):]
    q4 = q4[:q4.index("</div>")]
    assert "<b>mode:</b> generated" in q4 and "Use port 9000." in q4
    q3 = html[html.index("<b>q3</b>"):]
    assert "<b>generated:</b> It is Annoy." in q3[:q3.index("</div>")]


def test_html_of_an_older_result(evidence_result: dict[str, Any]) -> None:
    html = render_html(_older(evidence_result))
    assert "<b>quotes:</b> none" in html and "<b>mode:</b> –" in html


def test_compare_the_evidence_metrics(evidence_result: dict[str, Any]) -> None:
    better = copy.deepcopy(evidence_result)
    agg = better["aggregates"]
    agg["quality"]["evidence_contains"] = 1.0
    agg["repeated_sentence_answers"] = 0
    agg["prompt_tokens"]["p50"] = 60.0
    agg["modes"] = {"generated": 0.75, "quote": 0.0, "abstained": 0.25}
    better["items"][2]["mode"] = "generated"  # q3
    diff = compare(evidence_result, better, fail_on_drop=0.0)
    evidence = next(d for d in diff.quality if d.name == "evidence_contains")
    assert evidence.delta == pytest.approx(1 / 3) and evidence.improved
    answers = {d.name: d for d in diff.answers}
    assert (answers["repeated-sentence answers"].delta, answers["prompt tokens p50"].delta) == (
        -1, -40.0)
    assert answers["repeated-sentence answers"].improved and answers["prompt tokens p50"].improved
    assert answers["mode quote"].delta == -0.25 and answers["mode quote"].improved is None
    assert diff.items[0].id == "q3" and diff.items[0].changes == ("mode quote -> generated",)
    worse = compare(better, evidence_result, fail_on_drop=0.1)
    assert worse.failures == ("evidence_contains dropped from 1.000 to 0.667 (more than 0.1)",)
    assert not {d.name: d for d in worse.answers}["prompt tokens p50"].improved


def test_compare_with_an_older_baseline(evidence_result: dict[str, Any]) -> None:
    old = _older(evidence_result)
    diff = compare(old, evidence_result, fail_on_drop=0.0, latency_factor=1.0)
    assert diff.failures == () and diff.items == ()
    quality = {d.name: d for d in diff.quality}
    # the old name is compared under the new one; metrics the baseline lacks are not gated
    assert "groundedness" not in quality and quality["shown_text_overlap"].delta == 0.0
    assert quality["evidence_contains"].baseline is None
    assert all(d.baseline is None for d in diff.answers)
    # and a drop in the renamed metric still fails the gate
    old["aggregates"]["quality"]["groundedness"] = 1.0
    assert compare(old, evidence_result, fail_on_drop=0.1).failures[0].startswith(
        "shown_text_overlap dropped")
    # so does the name in between
    between = copy.deepcopy(evidence_result)
    quality_b = between["aggregates"]["quality"]
    quality_b["overlap_groundedness"] = quality_b.pop("shown_text_overlap") + 0.5
    assert compare(between, evidence_result, fail_on_drop=0.1).failures[0].startswith(
        "shown_text_overlap dropped")


def test_the_headline_groundedness_is_the_check_of_generated_answers(
    evidence_result: dict[str, Any]
) -> None:
    """q3 was generated unsupported and shown as a quote: the quote's text overlaps its source
    fully, but the headline counts what the model generated (q1 1.0, q3 0.0, q4 0.5)."""
    quality = evidence_result["aggregates"]["quality"]
    assert quality["answer_groundedness"] == pytest.approx(0.5)
    assert "overlap_groundedness" not in quality
    rows = dict(headline(evidence_result["aggregates"]))
    assert rows["groundedness of generated answers (the service's check)"] == pytest.approx(0.5)
    html = render_html(evidence_result)
    assert html.index("<h2>Headline</h2>") < html.index("groundedness of generated answers")
    assert html.index("groundedness of generated answers") < html.index("<h2>Quality</h2>")


def test_a_metric_that_turns_none_fails_the_gate(evidence_result: dict[str, Any]) -> None:
    lost = copy.deepcopy(evidence_result)
    lost["aggregates"]["quality"]["answer_groundedness"] = None  # e.g. nothing was checked
    assert compare(evidence_result, lost).failures == ()  # no gate asked for
    assert compare(evidence_result, lost, fail_on_drop=0.1).failures == (
        "answer_groundedness was 0.500 and has no value now (nothing it could score)",)
    # abstention precision without a single abstention is undefined by design: no failure
    none_abstained = copy.deepcopy(evidence_result)
    none_abstained["aggregates"]["quality"]["abstention_precision"] = None
    assert compare(evidence_result, none_abstained, fail_on_drop=0.1).failures != ()
    none_abstained["aggregates"]["abstention"]["abstained"] = 0
    assert compare(evidence_result, none_abstained, fail_on_drop=0.1).failures == ()


def test_latency_of_a_run_with_only_cached_answers_is_not_a_figure(
    evidence_result: dict[str, Any]
) -> None:
    """A second run against the same API answers from the cache: no fresh latency, and the
    latency gate fails rather than pass on cache hits."""
    target = FakeTarget({q: replace(script, cached=True) for q, script
                         in EVIDENCE_SCRIPTS.items()})
    s = suite(Q1, Q2, Q3, Q4)
    cached = run_suite(s, target, ingest_corpus(s, target, lambda _: None), RunOptions())
    agg = cached["aggregates"]
    assert agg["fresh_answers"] == 0 and agg["latency_ms"]["total"] is None
    assert agg["cached_latency_ms"]["count"] == 4 and agg["tokens_per_second"] is None
    assert dict(headline(agg))["total ms p95 (fresh answers)"] == "no fresh answers (0 of 4 items)"
    gate = compare(evidence_result, cached, fail_on_drop=0.1, latency_factor=1.5)
    assert gate.failures == (
        "latency total p95 has no fresh answer to time in the candidate (all cached?)",)


def test_cli_compare_prints_the_answer_figures(tmp_path: Path,
                                               evidence_result: dict[str, Any]) -> None:
    write_json(_older(evidence_result), tmp_path / "a.json")
    write_json(evidence_result, tmp_path / "b.json")
    outcome = _cli("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                   "--fail-on-drop", "0.1")
    assert outcome.exit_code == 0, outcome.output
    assert "prompt tokens p50" in outcome.output and "mode quote" in outcome.output

"""Compare two results: metric differences, changed items, and a gate for CI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GATED_LATENCY = ("total", "p95")
ITEM_FLAGS = ("contains", "exact_match", "hit@5")
MACHINE_PATHS = frozenset({"data_dir", "converted_models_dir"})
# Quality metrics renamed since older results were written: old name -> current name.
RENAMED = {"groundedness": "shown_text_overlap", "overlap_groundedness": "shown_text_overlap"}


@dataclass(frozen=True)
class MetricDiff:
    name: str
    baseline: float | None
    candidate: float | None
    failed: bool = False
    better: str = "higher"  # "higher", "lower" or "" (neither: a share of answer modes)

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.candidate - self.baseline

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.candidate is None or self.baseline <= 0:
            return None
        return self.candidate / self.baseline

    @property
    def improved(self) -> bool | None:
        """Whether the candidate is better; None when undefined, equal or without direction."""
        if not self.delta or not self.better:
            return None
        return (self.delta > 0) == (self.better == "higher")


@dataclass(frozen=True)
class ItemChange:
    id: str
    question: str
    changes: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    quality: tuple[MetricDiff, ...]
    latency: tuple[MetricDiff, ...]
    answers: tuple[MetricDiff, ...]
    items: tuple[ItemChange, ...]
    settings: tuple[tuple[str, Any, Any], ...]
    failures: tuple[str, ...]


def compare(
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    fail_on_drop: float | None = None,
    latency_factor: float | None = None,
) -> Comparison:
    """Differences of `candidate` from `baseline`.

    Fails when a quality metric (all are higher-is-better) drops by more than `fail_on_drop`
    (absolute) or has no value where the baseline has one, or when p95 total latency of fresh
    answers grows by more than `latency_factor` or cannot be measured (every answer came from
    the cache); None skips a gate. The headline groundedness is `answer_groundedness`, the
    service's check of the generated text. Answer figures (repeated sentences, prompt tokens,
    modes) are compared but not gated.
    """
    quality = _quality(_renamed(baseline["aggregates"]["quality"]),
                       _renamed(candidate["aggregates"]["quality"]), fail_on_drop,
                       _undefined_by_design(candidate["aggregates"]))
    latency = _latency(baseline["aggregates"]["latency_ms"],
                       candidate["aggregates"]["latency_ms"], latency_factor)
    failures = [_quality_failure(d, fail_on_drop) for d in quality if d.failed]
    failures += [f"latency {d.name} grew {d.ratio:.2f}x (more than {latency_factor}x)"
                 if d.candidate is not None else
                 f"latency {d.name} has no fresh answer to time in the candidate (all cached?)"
                 for d in latency if d.failed]
    return Comparison(quality, latency, _answers(baseline["aggregates"], candidate["aggregates"]),
                      changed_items(baseline, candidate), settings_diff(baseline, candidate),
                      tuple(failures))


def _quality_failure(d: MetricDiff, limit: float | None) -> str:
    if d.candidate is None:
        return f"{d.name} was {d.baseline:.3f} and has no value now (nothing it could score)"
    return f"{d.name} dropped from {d.baseline:.3f} to {d.candidate:.3f} (more than {limit})"


def _renamed(quality: Mapping[str, float | None]) -> dict[str, float | None]:
    return {RENAMED.get(name, name): value for name, value in quality.items()}


def _undefined_by_design(agg: Mapping[str, Any]) -> set[str]:
    """Metrics whose None in `agg` is a fact, not a failure to score: abstention precision of
    a run that abstained on nothing."""
    return {"abstention_precision"} if (agg.get("abstention") or {}).get("abstained") == 0 \
        else set()


def _quality(
    a: Mapping[str, float | None], b: Mapping[str, float | None], limit: float | None,
    may_be_none: set[str] | frozenset[str] = frozenset(),
) -> tuple[MetricDiff, ...]:
    rows = []
    for name in [*a, *(n for n in b if n not in a)]:
        diff = MetricDiff(name, a.get(name), b.get(name))
        lost = diff.baseline is not None and diff.candidate is None and name not in may_be_none
        failed = limit is not None and (lost or (diff.delta is not None
                                                 and diff.delta < -limit - 1e-12))
        rows.append(MetricDiff(name, diff.baseline, diff.candidate, failed))
    return tuple(rows)


def _latency(
    a: Mapping[str, Mapping[str, float] | None],
    b: Mapping[str, Mapping[str, float] | None],
    factor: float | None,
) -> tuple[MetricDiff, ...]:
    rows = []
    for stage in a:
        for stat in ("p50", "p95", "max"):
            diff = MetricDiff(f"{stage} {stat}", (a.get(stage) or {}).get(stat),
                              (b.get(stage) or {}).get(stat))
            gated = (stage, stat) == GATED_LATENCY and factor is not None
            lost = diff.baseline is not None and diff.candidate is None
            failed = gated and (lost or (diff.ratio is not None and diff.ratio > (factor or 0)))
            rows.append(MetricDiff(diff.name, diff.baseline, diff.candidate, failed))
    return tuple(rows)


def _answers(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[MetricDiff, ...]:
    """Costs and kinds of answers, not gated: absent figures (older results) compare as None."""
    rows = [
        MetricDiff("repeated-sentence answers", a.get("repeated_sentence_answers"),
                   b.get("repeated_sentence_answers"), better="lower"),
        MetricDiff("prompt tokens p50", (a.get("prompt_tokens") or {}).get("p50"),
                   (b.get("prompt_tokens") or {}).get("p50"), better="lower"),
    ]
    modes_a, modes_b = a.get("modes") or {}, b.get("modes") or {}
    rows += [MetricDiff(f"mode {mode}", modes_a.get(mode), modes_b.get(mode), better="")
             for mode in dict.fromkeys([*modes_a, *modes_b])]
    return tuple(rows)


def changed_items(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> tuple[
        ItemChange, ...]:
    """Items whose pass/fail flags or abstention differ between the runs."""
    before = {i["id"]: i for i in baseline["items"]}
    out = []
    for item in candidate["items"]:
        old = before.get(item["id"])
        if old is None:
            continue
        changes = [f"{flag} {_flag(old['scores'].get(flag))} -> {_flag(item['scores'].get(flag))}"
                   for flag in ITEM_FLAGS
                   if old["scores"].get(flag) != item["scores"].get(flag)]
        if old.get("mode") and item.get("mode") and old["mode"] != item["mode"]:
            changes.append(f"mode {old['mode']} -> {item['mode']}")
        if old["abstained"] != item["abstained"]:
            changes.append("abstained" if item["abstained"] else "answered instead of abstaining")
        if bool(old.get("error")) != bool(item.get("error")):
            changes.append(f"error: {item.get('error')}" if item.get("error") else "error fixed")
        if changes:
            out.append(ItemChange(item["id"], item["question"], tuple(changes)))
    return tuple(out)


def _flag(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def settings_diff(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> tuple[
        tuple[str, Any, Any], ...]:
    """Settings and options that differ (figures from different settings are not like for like)."""
    out = []
    for section in ("settings", "options", "models"):
        a, b = baseline.get(section) or {}, candidate.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if key not in MACHINE_PATHS and a.get(key) != b.get(key):
                out.append((f"{section}.{key}", a.get(key), b.get(key)))
    return tuple(out)

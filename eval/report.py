"""Result files: the JSON document and a self-contained HTML report with embedded plots."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from eval.metrics import K_VALUES  # noqa: E402

WORST_ITEMS = 10
STAGES = ("retrieve", "first_token", "first_sentence", "total")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#222}
h1,h2{font-weight:600} table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums}
.item{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.rel{background:#e8f5e9} .snip{font-size:12px;color:#555;white-space:pre-wrap}
img{max-width:100%} code{background:#f5f5f5;padding:0 .2rem}
"""


def write_json(result: Mapping[str, Any], path: Path) -> None:
    """Write the result atomically (a temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_result(path: Path) -> dict[str, Any]:
    """A result written by `write_json`."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "aggregates" not in data:
        raise ValueError(f"{path} is not an evaluation result (no 'aggregates').")
    return data


def write_html(result: Mapping[str, Any], path: Path) -> None:
    """A self-contained report: summary, recall@k curve, latency histograms, worst items."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")


def render_html(result: Mapping[str, Any]) -> str:
    agg = result["aggregates"]
    suite = result["suite"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation: "
        f"{escape(suite['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Evaluation of suite <code>{escape(suite['name'])}</code></h1>",
        _run_facts(result),
        "<h2>Headline</h2>", _table(headline(agg), ("figure", "value")),
        "<h2>Quality</h2>", _table(agg["quality"].items(), ("metric", "mean")),
        "<h2>Answers</h2>", _answers_table(agg),
        "<h2>Retrieval</h2>", _img(recall_figure(agg["quality"])),
        "<h2>Latency (ms) and prompt tokens</h2>", _latency_table(agg),
        _img(latency_figure(result["items"])),
        "<h2>Worst items</h2>", *(_item_html(i) for i in worst_items(result["items"])),
        "</body></html>",
    ]
    return "\n".join(parts)


HEADLINE = (
    ("contains the reference", "contains"),
    ("token F1", "f1"),
    ("token F1 of what is shown first (the short answer, else the answer)", "first_shown_f1"),
    ("exact match of the short answer (where one was given)", "short_exact_match"),
    ("answers with a short answer", "short_answer_rate"),
    ("groundedness of generated answers (the service's check)", "answer_groundedness"),
    ("check precision (answers passed as generated that contain a reference)",
     "check_precision"),
    ("retrieval MRR", "mrr"),
)


def headline(agg: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The figures a run is judged by. Groundedness is the check of what the model generated;
    `shown_text_overlap` also scores quotes, verbatim source text, and is no headline."""
    quality = agg["quality"]
    rows: list[tuple[str, Any]] = [(label, quality.get(name)) for label, name in HEADLINE]
    fresh = agg.get("fresh_answers")
    total = (agg.get("latency_ms") or {}).get("total")
    rows.append(("total ms p95 (fresh answers)", total["p95"] if total else
                 f"no fresh answers ({fresh} of {agg['items']} items)" if fresh == 0 else None))
    return rows


def _run_facts(result: Mapping[str, Any]) -> str:
    agg = result["aggregates"]
    facts = [
        ("target", result.get("target")), ("git commit", result.get("git_commit")),
        ("started", result.get("started_at")), ("duration (s)", result.get("duration_s")),
        ("models", json.dumps(result.get("models"))), ("index version",
                                                       result.get("index_version")),
        ("items", f"{agg['items']} ({agg['answerable']} answerable, {agg['unanswerable']} "
                  f"unanswerable, {agg['errors']} errors)"),
        ("tokens/s", _fmt(agg.get("tokens_per_second"))),
        ("decode tokens/s", _fmt(agg.get("decode_tokens_per_second"))),
        ("cache hit rate", _fmt(agg.get("cache_hit_rate"))),
        ("usage", json.dumps(agg.get("usage"))),
    ]
    return _table(facts, ("", ""))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(rows: Any, header: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f"<tr><td>{escape(str(k))}</td><td class='num'>{escape(_fmt(v))}</td></tr>"
                   for k, v in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _answers_table(agg: Mapping[str, Any]) -> str:
    """Shares of answers per mode and the answers that repeat a sentence."""
    rows = [(f"mode {mode}", share) for mode, share in (agg.get("modes") or {}).items()]
    rows.append(("answers repeating a sentence", agg.get("repeated_sentence_answers")))
    return _table(rows, ("figure", "value"))


def _latency_table(agg: Mapping[str, Any]) -> str:
    rows = []
    for stage, summary in [*agg["latency_ms"].items(),
                           ("cached total", agg.get("cached_latency_ms")),
                           ("prompt tokens (not ms)", agg.get("prompt_tokens"))]:
        cells = "".join(f"<td class='num'>{_fmt((summary or {}).get(f))}</td>"
                        for f in ("p50", "p95", "max", "count"))
        rows.append(f"<tr><td>{escape(stage)}</td>{cells}</tr>")
    return ("<table><tr><th>stage</th><th>p50</th><th>p95</th><th>max</th><th>n</th></tr>"
            + "".join(rows) + "</table>")


def _img(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='plot' src='data:image/png;base64,{data}'>"


def recall_figure(quality: Mapping[str, float | None]) -> Figure:
    """recall@k and hit@k against k."""
    figure, axes = plt.subplots(figsize=(5, 3.2))
    for name, style in (("recall", "-o"), ("hit", "--s")):
        values = [quality.get(f"{name}@{k}") for k in K_VALUES]
        points = [(k, v) for k, v in zip(K_VALUES, values, strict=True) if v is not None]
        if points:
            axes.plot(*zip(*points, strict=True), style, label=f"{name}@k", alpha=0.8)
    axes.set(xlabel="k", ylabel="share", ylim=(0, 1.05), xticks=list(K_VALUES))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def latency_figure(items: Sequence[Mapping[str, Any]]) -> Figure:
    """One histogram per stage over the fresh (uncached) answers."""
    figure, axes = plt.subplots(1, len(STAGES), figsize=(12, 3))
    rows = [i for i in items if i.get("error") is None and not i.get("cached")]
    for ax, stage in zip(axes, STAGES, strict=True):
        values = [i["timings"][f"{stage}_ms"] for i in rows if f"{stage}_ms" in i["timings"]]
        ax.hist(values, bins=min(20, max(1, len(values))), color="#4c72b0")
        ax.set(title=stage.replace("_", " "), xlabel="ms", ylabel="items")
    return figure


def badness(item: Mapping[str, Any]) -> float:
    """How wrong an item went, 0 (fine) to 1: errors first, then missed answers and documents."""
    if item.get("error"):
        return 2.0
    if not item["answerable"]:  # wrong only when it was asked and answered anyway
        return 0.0 if item["abstained"] or not item.get("asked", True) else 1.0
    scores = item["scores"]
    parts = [scores.get(n) for n in ("contains", "f1", "mrr", "answer_groundedness")]
    defined = [p for p in parts if p is not None]
    return 1.0 - sum(defined) / len(defined) if defined else 1.0


def worst_items(items: Sequence[Mapping[str, Any]], n: int = WORST_ITEMS) -> list[Any]:
    ranked = sorted(items, key=lambda i: (-badness(i), i["id"]))
    return [i for i in ranked if badness(i) > 0][:n]


ITEM_SCORES = ("contains", "f1", "recall@5", "mrr", "evidence_contains", "answer_groundedness",
               "shown_text_overlap")


def _item_html(item: Mapping[str, Any]) -> str:
    relevant = set(item["relevant"])
    scores = ", ".join(f"{k} {_fmt(v)}" for k, v in item["scores"].items() if k in ITEM_SCORES)
    generated = item.get("generated_text", "")
    chunks = "".join(
        f"<tr class='{'rel' if c['document'] in relevant else ''}'><td>{n}</td>"
        f"<td>{escape(c['document'])}</td><td class='num'>{c['score']:.4f}</td>"
        f"<td class='snip'>{escape(c['text'])}</td></tr>"
        for n, c in enumerate(item["retrieved"], start=1))
    lines = [
        f"<b>{escape(item['id'])}</b>: {escape(item['question'])}",
        f"<b>references:</b> {escape(' | '.join(item['references']) or '(unanswerable)')}",
        f"<b>relevant:</b> {escape(', '.join(sorted(relevant)) or '–')}",
        f"<b>answer:</b> {escape(item['answer'] or item.get('error') or '')}",
        f"<b>mode:</b> {escape(item.get('mode') or '–')}",
        *([f"<b>generated:</b> {escape(generated)}"]
          if generated and generated != item["answer"] else []),
        f"<b>scores:</b> {escape(scores) or '–'}",
    ]
    return (f"<div class='item'>{'<br>'.join(lines)}"
            f"{_quotes_html(item.get('evidence') or (), relevant)}"
            "<table><tr><th>#</th><th>document</th><th>score</th><th>retrieved text</th></tr>"
            f"{chunks}</table></div>")


def _quotes_html(quotes: Sequence[Mapping[str, Any]], relevant: set[str]) -> str:
    """The answer's evidence in the service's order; quotes from relevant documents marked."""
    if not quotes:
        return "<br><b>quotes:</b> none"
    rows = "".join(
        f"<tr class='{'rel' if q['document'] in relevant else ''}'><td>{n}</td>"
        f"<td>{escape(q['document'])} [{q['source']}] {q['start']}–{q['end']}</td>"
        f"<td class='num'>{q['score']:.4f}</td><td>{_fmt(q.get('supports'))}</td>"
        f"<td class='snip'>{escape(q['text'])}</td></tr>"
        for n, q in enumerate(quotes, start=1))
    return ("<table><tr><th>#</th><th>quoted from [source] offsets</th><th>score</th>"
            f"<th>supports</th><th>quote</th></tr>{rows}</table>")

"""`rag eval run|compare` and `rag bench` (rag/cli.py passes their arguments through)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from eval.compare import Comparison, compare
from eval.report import headline, read_result, write_html, write_json
from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import Suite, SuiteError, load_suite
from eval.targets import EvalError, HttpTarget, Target, http_client, local_target
from rag.errors import RagError
from rag.settings import Settings

eval_app = typer.Typer(help="Evaluate answer and retrieval quality, latency and cost.",
                       no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False)
bench_app = typer.Typer(help="Measure speed as ratios to the raw libraries; writes JSON.",
                        pretty_exceptions_enable=False, add_completion=False)
console = Console()
RESULTS = Path("artifacts") / "eval"
SAMPLES = Path(__file__).parents[1] / "rag" / "samples"


def _columns() -> tuple[Any, ...]:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())


def _quiet_logs() -> None:
    """Warnings only; bm25s sets its own logger to DEBUG."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs naming Settings fields (as in RAG_KEY, without the prefix)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lower().removeprefix("rag_")
        if not sep or key not in Settings.model_fields:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE with KEY a setting, e.g. "
                                     "max_new_tokens=64.", param_hint="--set")
        out[key] = value
    return out


def load_settings(overrides: dict[str, str]) -> Settings:
    """Settings from the environment and .env, with `overrides` on top."""
    return Settings(**overrides)  # type: ignore[arg-type]


@contextmanager
def _target(url: str | None, key: str | None, data_dir: Path | None,
            overrides: dict[str, str]) -> Iterator[Target]:
    if url:
        with http_client(url, key) as client:
            yield HttpTarget(client)
        return
    settings = load_settings(overrides)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    with ExitStack() as stack:
        with console.status("loading models and index..."):
            target = stack.enter_context(local_target(settings, fresh=data_dir is None))
        yield target


@eval_app.command()
def run(
    suite_path: Annotated[Path, typer.Argument(
        metavar="SUITE", help="Suite folder (suite.json), JSONL or SQuAD file, or BEIR folder.")],
    url: Annotated[str | None, typer.Option(help="Evaluate this running API instead of the "
                                                 "local engine.")] = None,
    key: Annotated[str | None, typer.Option(envvar="RAG_EVAL_KEY",
                                            help="API key for --url.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Questions asked at once.")] = 1,
    out: Annotated[Path | None, typer.Option(
        help="Result JSON (the HTML report goes next to it). "
             "Default: artifacts/eval/SUITE-TIME.json")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Use this data directory (default: a fresh temp one).")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, max=50, help="Sources per answer.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    skip: Annotated[int, typer.Option(min=0, help="Leave out the first N questions (with "
                                                  "--limit: a fixed slice).")] = 0,
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "test",
    retrieval_only: Annotated[bool, typer.Option(
        help="Score retrieval only, generating no scored answers (local engine only; with "
             "--history own the earlier turns of a conversation are still answered).")] = False,
    history: Annotated[str, typer.Option(
        help="What follow-up turns are asked after: own (the service's earlier answers in "
             "this run) or reference (the suite's reference answers: an upper bound).")]
        = "own",
    setting: Annotated[list[str] | None, typer.Option(
        "--set", help="Engine setting KEY=VALUE for the local run (repeatable).")] = None,
) -> None:
    """Ingest a suite's corpus, ask its questions, score them; writes JSON and HTML."""
    _quiet_logs()
    overrides = parse_overrides(setting or [])
    if retrieval_only and url:
        raise typer.BadParameter("the API has no retrieval-only endpoint; leave out --url.",
                                 param_hint="--retrieval-only")
    if history not in ("own", "reference"):
        raise typer.BadParameter("use own or reference.", param_hint="--history")
    options = RunOptions(top_k, concurrency, limit, retrieval_only, skip=skip,
                         history=history)  # type: ignore[arg-type]
    try:
        suite = load_suite(suite_path, split)
        result = _run(suite, url, key, data_dir, overrides, options)
    except (SuiteError, EvalError, RagError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    out = out or RESULTS / f"{suite.name}-{datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(result, out)
    write_html(result, out.with_suffix(".html"))
    print_summary(result)
    console.print(f"wrote {out} and {out.with_suffix('.html')}")
    agg = result["aggregates"]
    raise typer.Exit(1 if agg["errors"] == agg["items"] else 0)


def _run(suite: Suite, url: str | None, key: str | None, data_dir: Path | None,
         overrides: dict[str, str], options: RunOptions) -> dict[str, Any]:
    count = len(suite.limited(options.limit, options.skip).items)
    with _target(url, key, data_dir, overrides) as target, \
            Progress(*_columns(), console=console) as bar:
        ingest = bar.add_task("ingesting corpus", total=len(suite.corpus))
        corpus = ingest_corpus(suite, target, lambda n: bar.advance(ingest, n))
        asking = bar.add_task("asking", total=count)
        return run_suite(suite, target, corpus, options, lambda _: bar.advance(asking))


def print_summary(result: dict[str, Any]) -> None:
    """The headline figures of one run."""
    agg = result["aggregates"]
    table = Table(title=f"suite {result['suite']['name']}: {agg['items']} items, "
                        f"{agg['errors']} errors")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in headline(agg):
        table.add_row(f"[bold]{label}[/]", value if isinstance(value, str) else _fmt(value))
    for name, value in agg["quality"].items():
        table.add_row(name, _fmt(value))
    for stage, summary in agg["latency_ms"].items():
        if summary:
            table.add_row(f"{stage} ms p50 / p95 / max (fresh answers)",
                          f"{summary['p50']:.0f} / {summary['p95']:.0f} / {summary['max']:.0f}")
    prompt = agg.get("prompt_tokens")
    if prompt:
        table.add_row("prompt tokens p50 / p95 / max",
                      f"{prompt['p50']:.0f} / {prompt['p95']:.0f} / {prompt['max']:.0f}")
    table.add_row("tokens/s (decode)", f"{_fmt(agg['tokens_per_second'])} "
                                       f"({_fmt(agg['decode_tokens_per_second'])})")
    for mode, share in (agg.get("modes") or {}).items():
        table.add_row(f"mode {mode}", _fmt(share))
    table.add_row("answers repeating a sentence", str(agg.get("repeated_sentence_answers", "–")))
    table.add_row("cache hit rate", _fmt(agg["cache_hit_rate"]))
    followup = agg.get("followup")
    if followup:
        asked_after = ", ".join(f"{n} after {HISTORY_LABELS.get(k, k)}"
                                for k, n in (followup.get("history") or {}).items())
        table.add_row("follow-ups asked", asked_after or "–")
        for name in ("hit@1", "hit@3", "mrr"):
            table.add_row(f"follow-ups ({followup['turns']}) {name} with / without history",
                          f"{_fmt(followup[f'with_history_{name}'])} / "
                          f"{_fmt(followup[f'without_history_{name}'])}")
    console.print(table)


HISTORY_LABELS = {"own": "its own earlier answers",
                  "reference": "the reference answers (an upper bound)",
                  "suite": "the history the suite gives"}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


@eval_app.command(name="export-feedback")
def export_feedback(
    out: Annotated[Path, typer.Option(help="The JSONL suite to write.")] = Path(
        "feedback.jsonl"),
    rating: Annotated[str, typer.Option(help="all, up or down.")] = "all",
    data_dir: Annotated[Path | None, typer.Option(
        help="Data directory of the service (default: RAG_DATA_DIR).")] = None,
) -> None:
    """Write rated answers (POST /v1/feedback) as a JSONL suite for `rag eval run`."""
    from eval.feedback import counts, export
    from rag.stores.conversations import build_conversations

    if rating not in ("all", "up", "down"):
        raise typer.BadParameter("use all, up or down.", param_hint="--rating")
    settings = load_settings({"data_dir": str(data_dir)} if data_dir else {})
    store = build_conversations(settings)
    store.open()
    try:
        feedback = store.feedback()
    finally:
        store.close()
    written = export(feedback, out, rating)  # type: ignore[arg-type]
    tally = counts(feedback)
    console.print(f"wrote {written} rated answers to {out} ({tally['up']} up, "
                  f"{tally['down']} down in the store); score them over the service's "
                  f"documents with `rag eval run {out} --data-dir <its data dir>` "
                  "or `--url <its URL>`")


@eval_app.command(name="compare")
def compare_command(
    baseline: Annotated[Path, typer.Argument(help="Result JSON of the baseline run.")],
    candidate: Annotated[Path, typer.Argument(help="Result JSON of the candidate run.")],
    fail_on_drop: Annotated[float | None, typer.Option(
        min=0.0, help="Exit 1 when a quality metric drops by more than this (absolute), or p95 "
                      "total latency grows by more than --latency-factor.")] = None,
    latency_factor: Annotated[float | None, typer.Option(
        min=1.0, help="Default: RAG_EVAL_MAX_LATENCY_FACTOR.")] = None,
    latency_gate: Annotated[bool, typer.Option(
        help="Gate on latency too (turn off on noisy CI machines).")] = True,
) -> None:
    """Show the differences between two runs; with --fail-on-drop, gate on them."""
    try:
        a, b = read_result(baseline), read_result(candidate)
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    factor = None
    if fail_on_drop is not None and latency_gate:
        factor = latency_factor or load_settings({}).eval_max_latency_factor
    result = compare(a, b, fail_on_drop, factor)
    print_comparison(result)
    raise typer.Exit(1 if result.failures else 0)


def print_comparison(result: Comparison) -> None:
    """Tables of metric differences, changed items, differing settings and failures."""
    table = Table(title="quality (higher is better)")
    for column in ("metric", "baseline", "candidate", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for d in result.quality:
        style = "red" if d.failed else ("green" if (d.delta or 0) > 0 else "")
        table.add_row(d.name, _fmt(d.baseline), _fmt(d.candidate), _fmt(d.delta, True),
                      style=style)
    console.print(table)
    latency = Table(title="latency (ms)")
    for column in ("stage", "baseline", "candidate", "ratio"):
        latency.add_column(column, justify="left" if column == "stage" else "right")
    for d in result.latency:
        latency.add_row(d.name, _ms(d.baseline), _ms(d.candidate),
                        f"{d.ratio:.2f}x" if d.ratio else "–", style="red" if d.failed else "")
    console.print(latency)
    answers = Table(title="answers (repeats and prompt tokens: lower is better; modes: shares)")
    for column in ("figure", "baseline", "candidate", "delta"):
        answers.add_column(column, justify="left" if column == "figure" else "right")
    for d in result.answers:
        style = {True: "green", False: "yellow", None: ""}[d.improved]
        answers.add_row(d.name, _fmt(d.baseline), _fmt(d.candidate), _fmt(d.delta, True),
                        style=style)
    console.print(answers)
    for item in result.items:
        console.print(f"[bold]{item.id}[/] {item.question}: {'; '.join(item.changes)}",
                      markup=True, highlight=False)
    for name, before, after in result.settings:
        console.print(f"[yellow]differs:[/] {name}: {before!r} -> {after!r}")
    for failure in result.failures:
        console.print(f"[red]FAIL[/] {failure}")
    if not result.failures:
        console.print("[green]no metric dropped beyond the limits[/]")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


@bench_app.callback(invoke_without_command=True)
def bench(
    out: Annotated[Path, typer.Option(help="Where to write the JSON.")] = Path(
        "artifacts/bench.json"),
    sizes: Annotated[str, typer.Option(
        help="Generated chunk counts for the retrieval benchmark, comma-separated.")]
        = "10000,100000",
    asks: Annotated[int, typer.Option(min=1, help="Questions per ask measurement.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Queries per retrieval measurement.")] = 50,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per generation.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of ingest and generation "
                                                    "(medians are quoted).")] = 3,
    corpus: Annotated[Path, typer.Option(help="Files to ingest and ask over.")] = SAMPLES,
    starts: Annotated[bool, typer.Option(help="Measure time to ready in subprocesses.")] = True,
    concurrency: Annotated[str, typer.Option(
        help="Concurrent streams to measure generation at, comma-separated.")] = "1,2,4,8",
    dtypes: Annotated[bool, typer.Option(
        help="Compare float32 and bfloat16 answers on the sample questions.")] = True,
    database_url: Annotated[str | None, typer.Option(
        help="A PostgreSQL server on which to compare the SQLite and PostgreSQL stores, the "
        "index change log and the SAQ queues (it makes and drops scratch databases).")] = None,
    store_rows: Annotated[int, typer.Option(
        min=1, help="Chunks to build an index from at start (with --database-url).")] = 100_000,
    compare_model: Annotated[str | None, typer.Option(
        help="Another generator (e.g. smollm2-135m-instruct) to answer the sample questions "
        "with, alternating with the configured one: uncached ask p50/p95 of each and their "
        "ratio.")] = None,
    access_chunks: Annotated[int, typer.Option(
        min=0, help="Chunks of the tenant-filter corpus: recall@5 and ask p50 of a key that may "
        "read a tenth of it beside an unrestricted key (0 skips it; at least 740).")] = 10_000,
    access_questions: Annotated[int | None, typer.Option(
        min=1, help="Notre Dame questions for its recall (default: all 269).")] = None,
    access_asks: Annotated[int, typer.Option(
        min=1, help="Fresh asks per key for its ask latency.")] = 20,
    access_only: Annotated[bool, typer.Option(
        help="Run the tenant-filter section alone.")] = False,
) -> None:
    """Ingest, retrieval, ask, decode, memory and start-up figures beside the raw libraries."""
    from eval.bench import BenchOptions, run_bench

    _quiet_logs()
    try:
        chunk_counts = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{sizes!r}: expected numbers like 10000,100000.") from exc
    try:
        levels = tuple(int(s) for s in concurrency.split(",") if s.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{concurrency!r}: expected numbers like 1,2,4,8.") from exc
    if not levels or min(levels) < 1:
        raise typer.BadParameter("--concurrency needs levels of 1 or more, e.g. 1,2,4,8.")
    if access_only and not access_chunks:
        raise typer.BadParameter("--access-only needs --access-chunks above 0.")
    if 0 < access_chunks < 740:
        raise typer.BadParameter("--access-chunks needs 0 (skip) or at least 740: the readable "
                                 "tenth must hold the 55 Notre Dame paragraphs.")
    options = BenchOptions(chunk_counts, asks, repeats, max_new_tokens, starts, rounds, corpus,
                           levels, dtypes, database_url, store_rows, compare_model,
                           access_chunks, access_questions, access_asks)
    with Progress(*_columns(), console=console) as bar:
        if access_only:
            from eval.bench.run import run_access_bench

            result = run_access_bench(load_settings({}), options, _stage_reporter(bar))
        else:
            result = run_bench(load_settings({}), options, _stage_reporter(bar))
    write_json(result, out)
    print_bench(result)
    console.print(f"wrote {out}")


def _stage_reporter(bar: Progress) -> Any:
    task = bar.add_task("benchmark", total=None)

    def report(stage: str, done: int, total: int) -> None:
        bar.update(task, description=stage, completed=done, total=total)

    return report


def print_bench(result: dict[str, Any]) -> None:
    """The headline bench figures: medians, and the ratios that count."""
    table = Table(title="rag bench (medians; ratios are engine / raw library, like for like: "
                        "generation.decode_ratio without prompt lookup in either, "
                        "generation.prompt_lookup_decode_ratio with it in both)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in flatten(result.get("figures", {})):
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`a.b.c`-named leaves of nested dicts."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data

"""`rag bench`'s run: one engine over a temp data dir, every section in turn, and the result
document (machine, settings, options, the headline figures and each section's own figures).

These machines are shared and noisy, so the figures that count are ratios taken in one run
(engine / raw library, doing the same work: with the same decoding tricks on or off in both);
every figure is a median (p50) or a percentile over repeats.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.bench.access import bench_access
from eval.bench.generation import bench_generation
from eval.bench.ingest import bench_ingest
from eval.bench.measure import SAMPLE_SUITE, BenchOptions, Report, peak_rss_mb
from eval.bench.ocr import bench_ocr
from eval.bench.retrieval import bench_retrieval
from eval.bench.serving import (
    bench_ask,
    bench_bfloat16,
    bench_engines,
    bench_models,
    bench_serving,
)
from eval.bench.startup import bench_startup
from eval.suites import load_suite
from eval.targets import git_commit, public_settings
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.embedding import Embedder
    from rag.generation.base import Generator
    from rag.service import RagService


def run_bench(
    settings: Settings,
    options: BenchOptions,
    report: Report = lambda *_: None,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """Every measurement, over temp data dirs; models may be passed in already loaded."""
    from rag.service import RagService

    started, load_before = datetime.now(UTC), os.getloadavg()
    questions = [i.question for i in load_suite(SAMPLE_SUITE).items if i.answerable]
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        base = settings.model_copy(update={
            "data_dir": Path(tmp) / "data", "converted_models_dir": settings.models_dir,
            "max_new_tokens": options.max_new_tokens})
        service = RagService(base, embedder=embedder, generator=generator)
        service.load()
        results = {
            "ingest": bench_ingest(service, options, Path(tmp), report),
            "ocr": bench_ocr(options, Path(tmp), report),
            "retrieval": {str(n): bench_retrieval(service, n, questions, options, Path(tmp),
                                                  report) for n in options.sizes},
            "access": bench_access(service, options, Path(tmp), report)
            if options.access_chunks else None,
            "ask": bench_ask(service, questions[: options.asks], report),
            "engines": bench_engines(service, questions[: options.asks], report),
            "models": bench_models(service, options.compare_model, questions, report)
            if options.compare_model else None,
            "generation": bench_generation(service, questions, options, report),
            "serving": bench_serving(service, questions, options.concurrency,
                                     options.max_new_tokens, options.rounds, report),
            "dtypes": bench_bfloat16(service, questions, options.max_new_tokens, report)
            if options.dtypes else None,
            "startup": bench_startup(settings, Path(tmp), report) if options.starts else None,
            "store": _bench_stores(base, options, questions, service, report)
            if options.database_url else None,
        }
        service.close()
    return {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine() | {"load_average_before": load_before,
                                "load_average_after": os.getloadavg()},
        "settings": public_settings(base),
        "options": asdict(options) | {"corpus": str(options.corpus)},
        "figures": headline(results),
        **results,
        "memory": {"bench_peak_rss_mb": peak_rss_mb()},
    }


def run_access_bench(settings: Settings, options: BenchOptions,
                     report: Report = lambda *_: None) -> dict[str, Any]:
    """The access section alone (`rag bench --access-only`), as `run_bench` runs it."""
    from rag.service import RagService

    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        base = settings.model_copy(update={
            "data_dir": Path(tmp) / "data", "converted_models_dir": settings.models_dir,
            "max_new_tokens": options.max_new_tokens})
        service = RagService(base)
        service.load()
        try:
            access = bench_access(service, options, Path(tmp), report)
        finally:
            service.close()
    return {"schema": 1, "started_at": started.isoformat(timespec="seconds"),
            "git_commit": git_commit(), "machine": machine(), "settings": public_settings(base),
            "options": asdict(options) | {"corpus": str(options.corpus)},
            "figures": {"access": access_figures(access)}, "access": access}


def _bench_stores(settings: Settings, options: BenchOptions, questions: Sequence[str],
                  service: RagService, report: Report) -> dict[str, Any]:
    from eval.bench.store import bench_queues, bench_store
    from rag.stores.postgres import scratch_database

    assert options.database_url is not None
    result = bench_store(settings, options.database_url, options.corpus,
                         questions[: options.asks], service.embedder, service.generator,
                         options.store_rows, report=report)
    with scratch_database(options.database_url, "rag_bench") as url:
        queues = {"postgres": url} | ({"redis": settings.redis_url} if settings.redis_url else {})
        result["queues"] = bench_queues(queues)
    return result


def machine() -> dict[str, Any]:
    """Where the figures were taken: platform, Python, CPUs, torch and its threads, the GPU."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Medians and the engine / raw ratios, in one small table."""
    ing, ask = results["ingest"], results["ask"]
    starts = results.get("startup") or {}
    return {
        "ingest": {"chunks_per_s": ing["chunks_per_s"], "tokens_per_s": ing["tokens_per_s"],
                   "raw_encode_chunks_per_s": ing["raw_encode_chunks_per_s"],
                   "ratio_to_raw_encode": _ratio(ing["chunks_per_s"],
                                                 ing["raw_encode_chunks_per_s"])},
        "ocr": {k: v for k, v in results["ocr"].items()
                if k in ("pages_per_s", "raw_pages_per_s", "ratio_to_raw",
                         "character_accuracy", "skipped")},
        "retrieval": {size: _retrieval_figures(r) for size, r in results["retrieval"].items()},
        "access": access_figures(results.get("access") or {}),
        "ask": {"uncached_p50_ms": ask["uncached_ms"]["p50"],
                "uncached_p95_ms": ask["uncached_ms"]["p95"],
                "cached_p50_ms": ask["cached_ms"]["p50"], "cached_p95_ms": ask["cached_ms"]["p95"],
                "first_token_p50_ms": ask["first_token_ms"]["p50"]},
        "generation": generation_figures(results["generation"]),
        "serving": _serving_figures(results.get("serving") or {}),
        "engines": {k: v for k, v in (results.get("engines") or {}).items()
                    if k in ("process_to_thread_ratio", "same_answers", "skipped")},
        "models": {k: v for k, v in (results.get("models") or {}).items()
                   if k in ("uncached_p50_ratio", "both_answered_p50_ratio",
                            "first_token_p50_ratio", "skipped")},
        "dtypes": {k: v for k, v in (results.get("dtypes") or {}).items()
                   if k in ("prompts", "same_greedy_answers", "speed_ratio")},
        "memory": {"serving_peak_rss_mb": (starts.get("second") or {}).get("peak_rss_mb"),
                   "engine_peak_rss_mb": (starts.get("second") or {}).get("engine_peak_rss_mb")},
        "startup": {f"{name}_ready_s": run["ready_s"] for name, run in starts.items()},
    }


def generation_figures(gen: dict[str, Any]) -> dict[str, Any]:
    """The engine / plain generate ratios, like for like: `decode_ratio` (the headline) has
    prompt lookup off in both, `prompt_lookup_decode_ratio` on in both; never the engine with
    drafts against generate without (that counts copying from the sources as engine speed)."""
    if "skipped" in gen:
        return gen
    engine, raw = gen["engine"], gen["generate"]
    engine_lookup, raw_lookup = gen["engine_prompt_lookup"], gen["generate_prompt_lookup"]
    decode = "decode_tokens_per_s"
    return {
        "decode_tokens_per_s": engine[decode], "raw_decode_tokens_per_s": raw[decode],
        "decode_ratio": _ratio(engine[decode], raw[decode]),
        "prompt_lookup_decode_tokens_per_s": engine_lookup[decode],
        "raw_prompt_lookup_decode_tokens_per_s": raw_lookup[decode],
        "prompt_lookup_decode_ratio": _ratio(engine_lookup[decode], raw_lookup[decode]),
        "prefill_tokens_per_s": engine["prefill_tokens_per_s"],
        "raw_prefill_tokens_per_s": raw["prefill_tokens_per_s"],
        "prefill_ratio": _ratio(engine["prefill_tokens_per_s"], raw["prefill_tokens_per_s"]),
        "first_token_ms": engine["first_token_ms"],
        "same_greedy_text_as_plain_generate": gen["same_greedy_tokens"],
        # what prompt lookup saves each of them (whole-answer time without / with)
        "engine_prompt_lookup_speedup": _ratio(engine["total_ms"], engine_lookup["total_ms"]),
        "raw_prompt_lookup_speedup": _ratio(raw["total_ms"], raw_lookup["total_ms"]),
        **_llama_cpp_figures(engine, engine_lookup, gen["llama_cpp"])}


def _llama_cpp_figures(engine: dict[str, float], engine_lookup: dict[str, float],
                       peer: dict[str, Any]) -> dict[str, Any]:
    """Our one-stream decode beside llama.cpp's on the same prompt, like for like (prompt
    lookup off in both, then on in both), and its eight-sequence figures."""
    if "skipped" in peer:
        return {"llama_cpp": peer["skipped"]}
    decode = "decode_tokens_per_s"
    parallel = peer["parallel"]
    return {
        "llama_cpp_decode_tokens_per_s": peer["single"][decode],
        "decode_ratio_to_llama_cpp": _ratio(engine[decode], peer["single"][decode]),
        "llama_cpp_prompt_lookup_decode_tokens_per_s": peer["single_prompt_lookup"][decode],
        "prompt_lookup_decode_ratio_to_llama_cpp": _ratio(
            engine_lookup[decode], peer["single_prompt_lookup"][decode]),
        "llama_cpp_first_token_ms": peer["single"]["first_token_ms"],
        "llama_cpp_parallel_aggregate_tokens_per_s": parallel["aggregate_tokens_per_s"],
        "llama_cpp_parallel_aggregate_ratio_to_one": parallel["aggregate_ratio_to_one"],
        "llama_cpp_parallel_slowest_first_token_ratio_to_one":
            parallel["slowest_first_token_ratio_to_one"]}


def access_figures(access: dict[str, Any]) -> dict[str, Any]:
    """A key of one tenant (a tenth of the corpus) beside an unrestricted one: recall@5 with
    the filter before ranking, of that tenth alone, filtered after ranking, unrestricted; and
    retrieval and fresh-ask p50s with their ratios (the issue's bound: 1.2)."""
    if "ask" not in access:
        return {}
    ask = access["ask"]
    return {
        "chunks": access["chunks"],
        **{f"{name}_recall_at_5": access[f"{name}_recall_at_5"] for name in (
            "restricted", "alone", "post_filter", "post_filter_top50", "unrestricted")},
        "restricted_retrieval_p50_ms": access["restricted_retrieval_ms"]["p50"],
        "unrestricted_retrieval_p50_ms": access["unrestricted_retrieval_ms"]["p50"],
        "retrieval_p50_ratio": access["retrieval_p50_ratio"],
        "restricted_ask_p50_ms": ask["restricted"]["total_ms"]["p50"],
        "unrestricted_ask_p50_ms": ask["unrestricted"]["total_ms"]["p50"],
        "ask_p50_ratio": ask["p50_ratio"],
        "ask_both_answered_p50_ratio": ask["both_answered_p50_ratio"]}


def _serving_figures(serving: dict[str, Any]) -> dict[str, Any]:
    if "concurrency" not in serving:
        return serving
    levels = serving["concurrency"]
    top = levels[max(levels, key=int)]
    return {
        "aggregate_tokens_per_s": {n: f["aggregate_tokens_per_s"] for n, f in levels.items()},
        "aggregate_ratio_at_most_concurrent": top["aggregate_ratio_to_one"],
        "slowest_first_token_ratio_at_most_concurrent": top["slowest_first_token_ratio_to_one"],
        "warm_prefix_first_token_ratio": serving["prefix"]["warm_ratio_to_cold"],
    }


def _retrieval_figures(r: dict[str, Any]) -> dict[str, Any]:
    raw = r["raw_encode_and_search_ms"]["p50"]
    return {
        "dense_p50_ms": r["dense_ms"]["p50"], "dense_p95_ms": r["dense_ms"]["p95"],
        "hybrid_p50_ms": r["hybrid_ms"]["p50"], "hybrid_p95_ms": r["hybrid_ms"]["p95"],
        "raw_faiss_search_p50_ms": r["raw_faiss_search_ms"]["p50"],
        "raw_encode_and_search_p50_ms": raw,
        "dense_ratio_to_raw": _ratio(r["dense_ms"]["p50"], raw),
        "hybrid_ratio_to_raw": _ratio(r["hybrid_ms"]["p50"], raw),
    }

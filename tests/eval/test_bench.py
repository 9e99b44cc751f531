"""`rag bench` in a tiny configuration: it works and writes every figure (nothing is timed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eval.bench import BenchOptions, run_bench
from eval.bench.run import generation_figures
from eval.cli import bench_app, flatten

LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
LLAMA_CPP_FIGURES = (
    "llama_cpp_decode_tokens_per_s", "decode_ratio_to_llama_cpp",
    "llama_cpp_prompt_lookup_decode_tokens_per_s", "prompt_lookup_decode_ratio_to_llama_cpp",
    "llama_cpp_first_token_ms", "llama_cpp_parallel_aggregate_tokens_per_s",
    "llama_cpp_parallel_aggregate_ratio_to_one",
    "llama_cpp_parallel_slowest_first_token_ratio_to_one")
TINY = BenchOptions(sizes=(300,), asks=2, repeats=3, max_new_tokens=6, starts=True, rounds=1,
                    concurrency=(1, 2), dtypes=False, access_chunks=0)  # access: own test


@pytest.mark.slow
def test_tiny_bench_has_every_figure(
    embedder: Any, generator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.settings import Settings

    # The start-up processes read these; the first one converts the model from scratch.
    monkeypatch.setenv("RAG_MAX_NEW_TOKENS", "6")
    settings = Settings(data_dir=tmp_path / "data", converted_models_dir=generator.model_dir.parent)
    result = json.loads(json.dumps(run_bench(settings, TINY, embedder=embedder,
                                             generator=generator)))
    figures = dict(flatten(result["figures"]))
    expected = {
        "ingest.chunks_per_s", "ingest.tokens_per_s", "ingest.raw_encode_chunks_per_s",
        "ingest.ratio_to_raw_encode", "ocr.pages_per_s", "ocr.raw_pages_per_s",
        "ocr.ratio_to_raw", "ocr.character_accuracy", "ask.uncached_p50_ms", "ask.uncached_p95_ms",
        "ask.cached_p50_ms", "ask.cached_p95_ms", "ask.first_token_p50_ms",
        "generation.decode_tokens_per_s", "generation.raw_decode_tokens_per_s",
        "generation.decode_ratio", "generation.prompt_lookup_decode_tokens_per_s",
        "generation.raw_prompt_lookup_decode_tokens_per_s",
        "generation.prompt_lookup_decode_ratio", "generation.prefill_tokens_per_s",
        "generation.raw_prefill_tokens_per_s", "generation.prefill_ratio",
        "generation.first_token_ms", "memory.serving_peak_rss_mb",
        "memory.engine_peak_rss_mb", "startup.first_ready_s",
        "startup.second_ready_s", "serving.aggregate_tokens_per_s.1",
        "serving.aggregate_tokens_per_s.2", "serving.aggregate_ratio_at_most_concurrent",
        "serving.slowest_first_token_ratio_at_most_concurrent",
        "serving.warm_prefix_first_token_ratio",
        "generation.same_greedy_text_as_plain_generate",
        "generation.engine_prompt_lookup_speedup", "generation.raw_prompt_lookup_speedup",
        "engines.process_to_thread_ratio", "engines.same_answers", *(
            (f"generation.{name}" for name in LLAMA_CPP_FIGURES) if LLAMA_CPP
            else ["generation.llama_cpp"]),
        *(f"retrieval.300.{name}" for name in (
            "dense_p50_ms", "dense_p95_ms", "hybrid_p50_ms", "hybrid_p95_ms",
            "raw_faiss_search_p50_ms", "raw_encode_and_search_p50_ms", "dense_ratio_to_raw",
            "hybrid_ratio_to_raw")),
    }
    assert set(figures) == expected
    # our loop and plain `model.generate` give the same greedy text (both float32 here)
    # (and prompt-lookup decoding gives the same tokens as plain greedy decoding)
    assert figures.pop("generation.same_greedy_text_as_plain_generate") is True
    # the engine process (skinny layers) answers as the thread engine (stock layers) does
    assert figures.pop("engines.same_answers") == result["engines"]["questions"] == TINY.asks
    if not LLAMA_CPP:
        assert "not installed" in figures.pop("generation.llama_cpp")
    else:  # the peer's figures are all numbers > 0, its eight (here two) sequences ran
        assert result["generation"]["llama_cpp"]["parallel"]["sequences"] == 2
    bad = {k: v for k, v in figures.items()
           if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0}
    assert not bad, bad
    assert result["retrieval"]["300"]["index_kind"] == "flat"
    assert result["ingest"]["chunks"] > 0 and result["memory"]["bench_peak_rss_mb"] > 0
    assert result["ocr"]["pages"] == 2 and figures["ocr.character_accuracy"] > 0.9
    generation = result["generation"]
    assert generation["engine"]["new_tokens"] <= 6
    # like for like: the headline engine run drafted nothing, the prompt-lookup one did, and
    # each is set beside plain generate with prompt lookup off and on in the same way
    assert generation["engine_drafts"]["engine"]["drafted"] == 0
    assert generation["engine_drafts"]["engine_prompt_lookup"]["drafted"] > 0
    assert result["figures"]["generation"] == generation_figures(generation)
    serving = result["serving"]
    assert serving["concurrency"]["2"]["clients"] == 2 and serving["prompts"] > 0
    # every level answers the same prompts, so the same tokens (greedy, float32)
    assert serving["concurrency"]["1"]["requests"] == serving["concurrency"]["2"]["requests"]
    assert serving["prefix"]["stats"]["prefix_hits"] >= 1  # the warm runs reused the KV
    # The first start converts the model, the second finds it converted.
    assert result["startup"]["first"]["peak_rss_mb"] > 0
    second = result["startup"]["second"]  # the API process and its engine process, together
    assert second["engine_peak_rss_mb"] > 0
    assert second["peak_rss_mb"] == second["api_peak_rss_mb"] + second["engine_peak_rss_mb"]


def _speeds(decode_tokens_per_s: float, total_ms: float) -> dict[str, float]:
    return {"new_tokens": 64, "first_token_ms": 200.0, "total_ms": total_ms,
            "prefill_tokens_per_s": 500.0, "decode_tokens_per_s": decode_tokens_per_s}


def test_generation_headline_is_like_for_like() -> None:
    gen = {"engine": _speeds(20.0, 3000.0), "engine_prompt_lookup": _speeds(30.0, 2000.0),
           "generate": _speeds(16.0, 3600.0), "generate_prompt_lookup": _speeds(20.0, 3000.0),
           "same_greedy_tokens": True, "llama_cpp": {"skipped": "not installed"}}
    figures = generation_figures(gen)
    # 20 / 16, not 30 / 16: the engine drafting against generate without would count
    # copying from the sources as engine speed
    assert figures["decode_ratio"] == 1.25
    assert figures["prompt_lookup_decode_ratio"] == 1.5  # 30 / 20, both drafting
    assert (figures["decode_tokens_per_s"], figures["raw_decode_tokens_per_s"]) == (20.0, 16.0)
    assert figures["prompt_lookup_decode_tokens_per_s"] == 30.0
    assert figures["raw_prompt_lookup_decode_tokens_per_s"] == 20.0
    assert figures["engine_prompt_lookup_speedup"] == 1.5
    assert figures["raw_prompt_lookup_speedup"] == 1.2
    assert figures["llama_cpp"] == "not installed"


def test_llama_cpp_is_set_beside_the_engine_like_for_like() -> None:
    gen = {"engine": _speeds(20.0, 3000.0), "engine_prompt_lookup": _speeds(30.0, 2000.0),
           "generate": _speeds(16.0, 3600.0), "generate_prompt_lookup": _speeds(20.0, 3000.0),
           "same_greedy_tokens": True, "llama_cpp": {
               "single": _speeds(40.0, 1800.0), "single_prompt_lookup": _speeds(50.0, 1500.0),
               "parallel": {"aggregate_tokens_per_s": 90.0, "aggregate_ratio_to_one": 2.25,
                            "slowest_first_token_ratio_to_one": 6.0}}}
    figures = generation_figures(gen)
    assert figures["decode_ratio_to_llama_cpp"] == 0.5  # 20 / 40: neither drafts
    assert figures["prompt_lookup_decode_ratio_to_llama_cpp"] == 0.6  # 30 / 50: both draft
    assert set(LLAMA_CPP_FIGURES) <= set(figures)
    assert figures["llama_cpp_parallel_aggregate_ratio_to_one"] == 2.25


def test_bench_cli_rejects_bad_sizes() -> None:
    outcome = CliRunner().invoke(bench_app, ["--sizes", "10k"])
    assert outcome.exit_code == 2
    assert "expected numbers like 10000,100000" in " ".join(outcome.output.split())


@pytest.mark.slow
def test_store_bench_compares_both_stores_on_the_same_corpus(
    embedder: Any, generator: Any, tmp_path: Path
) -> None:
    from eval.bench.store import bench_queues, bench_store
    from rag.settings import Settings
    from rag.stores.postgres import scratch_database
    from tests.conftest import PG_URL, REDIS_URL

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in range(3):
        (corpus / f"f{n}.txt").write_text(f"File {n} says the beacon {n} burns green. " * 20)
    settings = Settings(data_dir=tmp_path / "data", max_new_tokens=6)
    result = bench_store(settings, PG_URL, corpus, ["Which beacon burns green?"], embedder,
                         generator, rows=1500, follows=3)
    ingest = result["ingest"]
    assert ingest["sqlite"]["chunks"] == ingest["postgres"]["chunks"] > 0
    assert ingest["postgres_over_sqlite_throughput"] > 0
    assert result["ask"]["count"] == 1 and result["ask"]["postgres"]["total_ms"]["p50"] > 0
    assert result["follow"]["count"] == 3 and result["follow"]["p95_ms"] >= 0
    build = result["build"]
    assert build["chunks"] == 1500 and build["cold_start_build_s"] > 0
    with scratch_database(PG_URL, "rag_test") as url:
        queues = bench_queues({"postgres": url, "redis": REDIS_URL}, jobs=4)
    assert {q["jobs"] for q in queues.values()} == {4}

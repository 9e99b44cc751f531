"""`rag bench` in a tiny configuration: it works and writes every figure (nothing is timed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eval.bench import BenchOptions, run_bench
from eval.cli import bench_app, flatten

TINY = BenchOptions(sizes=(300,), asks=2, repeats=3, max_new_tokens=6, starts=True, rounds=1,
                    concurrency=(1, 2), dtypes=False)


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
        "ingest.ratio_to_raw_encode", "ask.uncached_p50_ms", "ask.uncached_p95_ms",
        "ask.cached_p50_ms", "ask.cached_p95_ms", "ask.first_token_p50_ms",
        "generation.decode_tokens_per_s", "generation.raw_decode_tokens_per_s",
        "generation.decode_ratio", "generation.prefill_tokens_per_s",
        "generation.raw_prefill_tokens_per_s", "generation.prefill_ratio",
        "generation.first_token_ms", "memory.serving_peak_rss_mb", "startup.first_ready_s",
        "startup.second_ready_s", "serving.aggregate_tokens_per_s.1",
        "serving.aggregate_tokens_per_s.2", "serving.aggregate_ratio_at_most_concurrent",
        "serving.slowest_first_token_ratio_at_most_concurrent",
        "serving.warm_prefix_first_token_ratio",
        "generation.same_greedy_text_as_plain_generate", "generation.prompt_lookup_speedup",
        "generation.llama_cpp_decode_tokens_per_s", "engines.process_to_thread_ratio",
        "engines.same_answers",
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
    peer = figures.pop("generation.llama_cpp_decode_tokens_per_s")  # None: not installed
    assert peer is None or peer > 0
    bad = {k: v for k, v in figures.items()
           if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0}
    assert not bad, bad
    assert result["retrieval"]["300"]["index_kind"] == "flat"
    assert result["ingest"]["chunks"] > 0 and result["memory"]["bench_peak_rss_mb"] > 0
    assert result["generation"]["engine"]["new_tokens"] <= 6
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

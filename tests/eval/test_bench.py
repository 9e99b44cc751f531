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

TINY = BenchOptions(sizes=(300,), asks=2, repeats=3, max_new_tokens=6, starts=True, rounds=1)


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
        "startup.second_ready_s",
        *(f"retrieval.300.{name}" for name in (
            "dense_p50_ms", "dense_p95_ms", "hybrid_p50_ms", "hybrid_p95_ms",
            "raw_faiss_search_p50_ms", "raw_encode_and_search_p50_ms", "dense_ratio_to_raw",
            "hybrid_ratio_to_raw")),
    }
    assert set(figures) == expected
    bad = {k: v for k, v in figures.items()
           if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0}
    assert not bad, bad
    assert result["retrieval"]["300"]["index_kind"] == "flat"
    assert result["ingest"]["chunks"] > 0 and result["memory"]["bench_peak_rss_mb"] > 0
    assert result["generation"]["engine"]["new_tokens"] <= 6
    # The first start converts the model, the second finds it converted.
    assert result["startup"]["first"]["peak_rss_mb"] > 0


def test_bench_cli_rejects_bad_sizes() -> None:
    outcome = CliRunner().invoke(bench_app, ["--sizes", "10k"])
    assert outcome.exit_code == 2
    assert "expected numbers like 10000,100000" in " ".join(outcome.output.split())

"""The load tool in its short form (`make load` runs the full one): a few clients for a few
seconds against a live API, every route of the mix, no errors, every upload indexed once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eval.load import ROUTES, LoadConfig, run_load
from tests.api.helpers import ADMIN_KEY, live_api

pytestmark = pytest.mark.slow


def test_short_load_has_no_errors_and_indexes_every_upload_once(
    tmp_path: Path, embedder: object, generator: object, models_dir: Path
) -> None:
    with live_api(tmp_path, embedder, generator, models_dir, api_keys={ADMIN_KEY: ["admin"]},
                  rate_limit_per_minute=100_000) as base:
        config = LoadConfig(base_url=base, key=ADMIN_KEY, clients=4, duration_s=8,
                            timeout_s=120, settle_s=120, seed=7, mix={
                                "ask_uncached": 0.1, "ask_cached": 0.3, "upload": 0.25,
                                "list": 0.2, "delete": 0.15})
        summary = asyncio.run(run_load(config))
    assert summary["errors"] == 0, summary["errors_by_status"]
    assert summary["uploads"]["exactly_once"], summary["uploads"]["problems"]
    assert summary["uploads"]["kept"] >= 1 and summary["uploads"]["deleted"] >= 1
    for route in ROUTES:
        figures = summary["routes"][route]
        assert figures["requests"] >= 1, (route, summary["routes"])
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert summary["routes"]["ask_cached"]["cache_hits"] >= 1
    assert summary["requests"] == sum(r["requests"] for r in summary["routes"].values())
    assert summary["elapsed_s"] < 8 + 120  # it stopped by itself

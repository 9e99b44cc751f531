"""The load tool in its short form (`make load` runs the full one): a few clients for a few
seconds against a live API, every route of the mix, real answers, no errors, every upload
indexed once; and how its summary keeps refusals apart from answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from eval.load import ROUTES, LoadConfig, Run, run_load, summarize
from tests.api.helpers import ADMIN_KEY, live_api

# Questions tests.api.helpers.CORPUS answers, as the served documents must for real answers.
CORPUS_QUESTIONS = ("Who is the beekeeper of the Larkspur apiary?",
                    "When does the Aldgate night train depart?",
                    "When is the highest tide at Port Vell?")

ANSWER_MS = 50  # how long the fake service takes to answer; it refuses at once


async def _shed_load(answers: int, refusals: int) -> Run:
    """A run whose uncached asks met a service answering `answers` of them (slowly) and
    refusing the rest at once, half 429 and half 503 (an httpx mock transport)."""
    async def service(request: httpx.Request) -> httpx.Response:
        if int(request.headers["x-n"]) < answers:
            await asyncio.sleep(ANSWER_MS / 1000)
            return httpx.Response(200, json={"answer": "Platform 9.", "mode": "generated",
                                             "cached": False})
        return httpx.Response(429 if int(request.headers["x-n"]) % 2 else 503)

    transport = httpx.MockTransport(service)
    async with httpx.AsyncClient(transport=transport, base_url="http://load.test") as client:
        run = Run(LoadConfig(base_url="http://load.test"), client)
        for n in range(answers + refusals):
            await run.timed("ask_uncached", "POST", "/v1/ask", json={"question": "?"},
                            headers={"x-n": str(n)})
    return run


def test_refusals_are_counted_apart_and_left_out_of_answer_latencies() -> None:
    summary = summarize(asyncio.run(_shed_load(answers=4, refusals=36)), 1.0,
                        {"exactly_once": True})
    asks = summary["routes"]["ask_uncached"]
    # the percentiles are the answers' alone: 36 instant refusals do not pull them down
    assert asks["p50_ms"] >= ANSWER_MS and asks["p95_ms"] >= ANSWER_MS
    assert asks["requests"] == 40 and asks["answered"] == 4
    assert asks["latency_by_class"]["2xx"]["count"] == 4
    assert asks["refused"] == 36 and asks["refused_by_status"] == {"429": 18, "503": 18}
    assert asks["refused_share"] == 0.9 and asks["modes"] == {"generated": 4}
    assert asks["latency_by_class"]["429"]["count"] == 18
    assert asks["latency_by_class"]["429"]["p95_ms"] < ANSWER_MS
    assert summary["refused"] == 36 and summary["errors"] == 0 and summary["ok"]


def test_a_run_whose_asks_were_all_refused_is_not_ok() -> None:
    summary = summarize(asyncio.run(_shed_load(answers=0, refusals=10)), 1.0,
                        {"exactly_once": True})
    asks = summary["routes"]["ask_uncached"]
    assert asks["p50_ms"] is None  # no answer, so no answer latency
    assert summary["errors"] == 0 and not summary["ok"]
    assert asks["answered"] == 0 and asks["refused"] == 10
    assert summary["unanswered_ask_routes"] == ["ask_uncached"]


@pytest.mark.slow
def test_short_load_has_no_errors_and_indexes_every_upload_once(
    tmp_path: Path, embedder: object, generator: object, models_dir: Path
) -> None:
    with live_api(tmp_path, embedder, generator, models_dir, api_keys={ADMIN_KEY: ["admin"]},
                  rate_limit_per_minute=100_000) as base:
        config = LoadConfig(base_url=base, key=ADMIN_KEY, clients=4, duration_s=8,
                            timeout_s=120, settle_s=120, seed=7, questions=CORPUS_QUESTIONS,
                            mix={
                                "ask_uncached": 0.1, "ask_cached": 0.3, "upload": 0.25,
                                "list": 0.2, "delete": 0.15})
        summary = asyncio.run(run_load(config))
    assert summary["errors"] == 0, summary["errors_by_status"]
    assert summary["uploads"]["exactly_once"], summary["uploads"]["problems"]
    assert summary["uploads"]["kept"] >= 1 and summary["uploads"]["deleted"] >= 1
    for route in ROUTES:
        figures = summary["routes"][route]
        assert figures["requests"] >= 1, (route, summary["routes"])
        # 4 clients and no rate limit: nothing is refused, every request is answered, and
        # the percentiles are over the answers
        assert figures["refused"] == 0, (route, figures["statuses"])
        assert figures["answered"] == figures["requests"] == figures["count"]
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    uncached = summary["routes"]["ask_uncached"]
    assert uncached["answered"] >= 3, uncached["statuses"]
    # each answered ask held an answer, and the questions are about the served documents:
    # the answers come from them (generated or quoted), not the cheap abstention path
    assert sum(uncached["modes"].values()) == uncached["answered"]
    assert "empty" not in uncached["modes"]
    sourced = uncached["modes"].get("generated", 0) + uncached["modes"].get("quote", 0)
    assert sourced >= uncached["answered"] - 1, uncached["modes"]
    assert summary["routes"]["ask_cached"]["cache_hits"] >= 1
    assert summary["ok"] and not summary["unanswered_ask_routes"]
    assert summary["requests"] == sum(r["requests"] for r in summary["routes"].values())
    assert summary["elapsed_s"] < 8 + 120  # it stopped by itself

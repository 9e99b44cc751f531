"""The service against its own OpenAPI document: schemathesis, every check, over real HTTP.

A live server (uvicorn, the app `rag serve` runs) over a throw-away data dir with an admin key
and the packaged models. Every operation gets examples, coverage and fuzzing cases, then the
stateful phase chains uploads, lists, reads and deletes through the links schemathesis infers.
Any failure of any check fails the test: the fix is in the document or the service, not here.
The same run from a shell, against `rag serve`:
    SCHEMATHESIS_HOOKS=tests.api.contract_hooks st run http://127.0.0.1:8000/schema/openapi.json \\
        --checks all -H "Authorization: Bearer <admin key>" --max-examples 12
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

import tests.api.contract_hooks  # noqa: F401 - registers what real uploads look like
from tests.api.helpers import ADMIN_KEY, live_api

pytestmark = pytest.mark.slow

# Bounded so the whole file stays near two minutes on two busy cores.
MAX_EXAMPLES = int(os.environ.get("RAG_CONTRACT_EXAMPLES", "12"))
SEED = 20261203


@pytest.fixture(scope="module")
def contract_server(
    tmp_path_factory: pytest.TempPathFactory, embedder: object, generator: object,
    models_dir: Path,
) -> Iterator[str]:
    """A live API with an admin key over its own data dir (the stateful phase deletes).

    Its rate limit is far above what the test sends: the middleware is there, 429 is not hit.
    """
    with live_api(tmp_path_factory.mktemp("contract"), embedder, generator, models_dir,
                  api_keys={ADMIN_KEY: ["admin"]}, rate_limit_per_minute=100_000) as base:
        yield base


def contract_config() -> schemathesis.Config:
    """`st run --checks all` with every phase, bounded, as code."""
    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
        "request-timeout": 60,
        "workers": 1,
        "seed": SEED,
        "checks": {"enabled": True},
        "generation": {"max-examples": MAX_EXAMPLES},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": True}},
    })


def run_schemathesis(base: str) -> tuple[Statistic, Counter[str], list[str]]:
    """Every phase through schemathesis's own engine (what `st run` drives): its statistics,
    responses per phase and status, and any errors that are not check failures."""
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json",
                                           config=contract_config())
    statistic, statuses, errors = Statistic(), Counter[str](), []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            statistic.on_scenario_finished(event.recorder)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[f"{event.phase.value} {interaction.response.status_code}"] += 1
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            errors.append(f"fatal: {event.exception!r}")
    return statistic, statuses, errors


def describe_failures(statistic: Statistic) -> list[str]:
    found = []
    for label, grouped in statistic.failures.items():
        for group in grouped.values():
            answer = group.response
            said = f"{answer.status_code} {answer.text[:300]}" if answer is not None else "-"
            found += [f"{label}: {failure.title}: {failure.message}\n  got {said}\n  "
                      f"{group.code_sample}" for failure in group.failures]
    return found


def test_schemathesis_finds_no_failure(contract_server: str) -> None:
    statistic, statuses, errors = run_schemathesis(contract_server)
    failures = describe_failures(statistic)
    summary = {"cases": statistic.total_cases, "failures": statistic.total_failures,
               "filtered_false_positives": statistic.filtered_failures,
               "errored_cases": statistic.errored_cases,
               "operations_tested": len(statistic.tested_operations),
               "responses": dict(sorted(statuses.items()))}
    print("schemathesis:", json.dumps(summary))
    assert not failures, "\n".join(failures)
    assert not errors, "\n".join(errors)
    assert statistic.errored_cases == 0
    # Every operation got cases with checks, and the stateful phase reached real resources.
    document = httpx.get(f"{contract_server}/schema/openapi.json").json()
    assert len(statistic.tested_operations) == sum(len(ops) for ops in document["paths"].values())
    assert statuses["stateful 202"] >= 1 and statuses["stateful 200"] >= 1, summary

"""The service against its own OpenAPI document: schemathesis, every check, over real HTTP.

A live server (uvicorn, the app `rag serve` runs) over a throw-away data dir with an admin key
and the packaged models. Every operation gets examples, coverage and fuzzing cases, then the
stateful phase chains uploads, lists, reads and deletes through the links schemathesis infers.
Any failure of any check fails the test: the fix is in the document or the service, not here.
The hooks drop only failures the document cannot prevent, and at most MAX_FILTERED of them; the
tests below hold the document to every refusal it can state, request by request.
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
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

from tests.api.contract_hooks import DROPPED, unstatable_chat_refusal  # registers the hooks
from tests.api.helpers import ADMIN_KEY, live_api

pytestmark = pytest.mark.slow

# Bounded so the whole file stays near two minutes on two busy cores.
MAX_EXAMPLES = int(os.environ.get("RAG_CONTRACT_EXAMPLES", "12"))
SEED = 20261203
# Failures the hooks may drop in one run: chats refused for a rule on the last message (it is
# the assistant's, or the question is blank), which the document cannot state. At 12 examples
# six runs (four seeds) dropped 2 to 11 of about 700 cases; 20 leaves room for the draw, and
# more examples draw more.
MAX_FILTERED = 40 * max(MAX_EXAMPLES, 12) // 12


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
    DROPPED.clear()
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
               "dropped": dict(DROPPED),
               "errored_cases": statistic.errored_cases,
               "operations_tested": len(statistic.tested_operations),
               "responses": dict(sorted(statuses.items()))}
    print("schemathesis:", json.dumps(summary))
    assert not failures, "\n".join(failures)
    assert not errors, "\n".join(errors)
    assert statistic.errored_cases == 0
    assert statistic.filtered_failures == sum(DROPPED.values()), summary
    assert statistic.filtered_failures <= MAX_FILTERED, summary
    # Every operation got cases with checks, and the stateful phase reached real resources.
    document = httpx.get(f"{contract_server}/schema/openapi.json").json()
    assert len(statistic.tested_operations) == sum(len(ops) for ops in document["paths"].values())
    assert statuses["stateful 202"] >= 1 and statuses["stateful 200"] >= 1, summary


# --- the document against the service, request by request --------------------------------

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
QUESTION = "Who keeps the bees?"
TURN = {"question": QUESTION, "answer": "Miriam Oduya."}
USER = {"role": "user", "content": QUESTION}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}

# Chat requests the service refuses (400), each for a rule the document states.
CHAT_REFUSED: dict[str, dict[str, Any]] = {
    "another role": {"messages": [{"role": "tool", "content": "x"}, USER]},
    "an image part": {"messages": [{"role": "user", "content": [IMAGE]}]},
    "a part without text": {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    "no user message": {"messages": [{"role": "system", "content": "Be brief."}]},
    "n of 2": {"messages": [USER], "n": 2},
    "five stops": {"messages": [USER], "stop": ["a", "b", "c", "d", "e"]},
    "an empty stop": {"messages": [USER], "stop": ""},
    "a negative temperature": {"messages": [USER], "temperature": -0.5},
}
# Chat requests it answers: the document must allow them.
CHAT_ANSWERED: dict[str, dict[str, Any]] = {
    "an image in a system message": {"messages": [{"role": "system", "content": [IMAGE]}, USER]},
    "a system message last": {"messages": [USER, {"role": "system", "content": "Be brief."}]},
    "integers written as 2.0": {"messages": [USER], "top_k": 2.0, "n": 1.0,
                                "max_completion_tokens": 2.0},
    "no stops, temperature 0": {"messages": [USER], "stop": [], "temperature": 0},
}
# Chat requests it refuses for a rule no schema can state: the filter drops these, only these.
CHAT_UNSTATABLE: dict[str, dict[str, Any]] = {
    "the assistant's message last": {"messages": [USER, {"role": "assistant", "content": "A."}]},
    "a blank question": {"messages": [{"role": "user", "content": " "}]},
}


def body_schema(base: str, path: str) -> jsonschema_rs.Validator:
    """The JSON Schema the served document gives the body of POST `path`."""
    document = httpx.get(f"{base}/schema/openapi.json").json()
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return jsonschema_rs.validator_for({**schema["schema"], "components": document["components"]})


def chat(base: str, fields: dict[str, Any]) -> tuple[dict[str, Any], httpx.Response]:
    """A chat request of the served model with `fields` (short answers), and its response."""
    model = httpx.get(f"{base}/v1/models", headers=HEADERS).json()["data"][0]["id"]
    body = {"model": model, "max_tokens": 4, **fields}
    return body, httpx.post(f"{base}/v1/chat/completions", json=body, headers=HEADERS,
                            timeout=60)


@pytest.mark.parametrize("fields", CHAT_REFUSED.values(), ids=list(CHAT_REFUSED))
def test_document_states_chat_refusals(contract_server: str, fields: dict[str, Any]) -> None:
    body, response = chat(contract_server, fields)
    assert response.status_code == 400, response.text
    assert unstatable_chat_refusal(response.json()) is None, response.text
    assert not body_schema(contract_server, "/v1/chat/completions").is_valid(body)


@pytest.mark.parametrize("fields", CHAT_ANSWERED.values(), ids=list(CHAT_ANSWERED))
def test_document_allows_chat_answers(contract_server: str, fields: dict[str, Any]) -> None:
    body, response = chat(contract_server, fields)
    assert response.status_code == 200, response.text
    assert body_schema(contract_server, "/v1/chat/completions").is_valid(body)


@pytest.mark.parametrize("fields", CHAT_UNSTATABLE.values(), ids=list(CHAT_UNSTATABLE))
def test_filter_drops_only_unstatable_chat_refusals(contract_server: str,
                                                    fields: dict[str, Any]) -> None:
    body, response = chat(contract_server, fields)
    assert response.status_code == 400, response.text
    assert unstatable_chat_refusal(response.json()) is not None, response.text
    assert body_schema(contract_server, "/v1/chat/completions").is_valid(body)


def test_document_states_conversation_or_history(contract_server: str) -> None:
    """A conversation and earlier turns together are refused (422), and the document says so;
    either alone, or a conversation with an empty history, is answered and allowed."""
    def ask(**fields: Any) -> tuple[dict[str, Any], httpx.Response]:
        body = {"question": QUESTION, **fields}
        return body, httpx.post(f"{contract_server}/v1/ask", json=body, headers=HEADERS,
                                timeout=60)

    valid = body_schema(contract_server, "/v1/ask").is_valid
    first, answered = ask(history=[TURN])
    assert answered.status_code == 200 and valid(first), answered.text
    _, started = ask()
    conversation = started.json()["conversation"]
    for fields in ({"conversation": conversation}, {"conversation": conversation, "history": []},
                   {"conversation": None, "history": [TURN]}):
        body, response = ask(**fields)
        assert response.status_code == 200 and valid(body), (fields, response.text)
    body, refused = ask(conversation=conversation, history=[TURN])
    assert refused.status_code == 422 and "Both a conversation" in refused.text, refused.text
    assert not valid(body)

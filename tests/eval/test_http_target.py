"""`--url` mode: the HTTP client against a scripted transport, then against the real API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import CorpusDocument, Suite, SuiteItem
from eval.targets import EvalError, HttpTarget, answer_from_api, http_client
from rag.types import Quote, SentenceCheck, ShortAnswer

KEY = "eval-key-3f9a0c"
ANSWER = {
    "question": "q", "answer": "Platform 9 [1].", "cached": False, "model": "m",
    "index_version": 2, "usage": {"prompt_tokens": 40, "completion_tokens": 4},
    "timings": {"retrieve_ms": 5.0, "prompt_ms": 1.0, "first_token_ms": 50.0,
                "generate_ms": 80.0, "total_ms": 90.0},
    "citations": [{"number": 1, "document_id": "d-rail", "filename": "rail.txt", "chunk_id": 7,
                   "text": "The train leaves from platform 9.", "start": 0, "end": 33,
                   "page": None, "score": 0.5}],
}
# The fields of evidence-first answering, as /v1/ask carries them.
EVIDENCE = {
    "mode": "quote", "groundedness": 0.5, "generated_text": "Platform 9 and 3/4 [1].",
    "evidence": [{"text": "The train leaves from platform 9.", "document_id": "d-rail",
                  "filename": "rail.txt", "start": 0, "end": 33, "page": None,
                  "title_path": ["Trains", "Departures"], "score": 0.8, "source": 1,
                  "supports": 1}],
    "sentences": [{"text": "Platform 9 and 3/4 [1].", "supported": False, "overlap": 0.5,
                   "missing": ["3/4"], "quote": 0}],
}
DOCS = (CorpusDocument("rail.txt", "rail.txt", text="The train leaves from platform 9."),
        CorpusDocument("bees.txt", "bees.txt", text="Bees make honey."))
ITEM = SuiteItem("t1", "Which platform does the train leave from?", ("platform 9",),
                 {"rail.txt": 1})


class FakeApi:
    """The documented contract: uploads answer 202 with job ids; jobs run, then finish."""

    def __init__(self, job_states: tuple[str, ...] = ("running", "done"),
                 answer: dict[str, Any] = ANSWER) -> None:
        self.job_states = job_states
        self.answer = answer
        self.polls: dict[str, int] = {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"message": "No or bad key.", "hint": "Send one."})
        if request.url.path == "/v1/documents":
            names = [part.split('filename="')[1].split('"')[0]
                     for part in request.content.decode().split("\r\n")
                     if 'name="files"' in part]
            return httpx.Response(202, json={"documents": [
                {"document_id": f"d-{n.split('.')[0]}", "job_id": f"j-{n}"} for n in names]})
        if request.url.path.startswith("/v1/jobs/"):
            job = request.url.path.rsplit("/", 1)[1]
            n = self.polls[job] = self.polls.get(job, -1) + 1
            state = self.job_states[min(n, len(self.job_states) - 1)]
            return httpx.Response(200, json={"state": state, "error": "no text in file"})
        if request.url.path == "/v1/ask":
            body = json.loads(request.content)
            return httpx.Response(200, json=self.answer | {"question": body["question"]})
        return httpx.Response(404, json={"message": "unknown route"})


def _client(api: FakeApi, key: str = KEY) -> httpx.Client:
    return http_client("http://api.test/", key, transport=httpx.MockTransport(api))


def _suite() -> Suite:
    return Suite("tiny", "jsonl", "memory", (ITEM,), DOCS)


def test_http_target_follows_the_contract() -> None:
    api = FakeApi()
    target = HttpTarget(_client(api), poll_s=0.0)
    corpus = ingest_corpus(_suite(), target, lambda _: None)
    assert dict(corpus.keys) == {"d-rail": "rail.txt", "d-bees": "bees.txt"}
    result = run_suite(_suite(), target, corpus, RunOptions(top_k=4))
    row = result["items"][0]
    assert row["error"] is None and row["ranking_source"] == "citations"
    assert (row["scores"]["hit@1"], row["scores"]["contains"]) == (1.0, 1.0)
    assert result["models"] == {"generator": "m"} and result["index_version"] == 2
    ask = json.loads(api.requests[-1].content)
    assert ask == {"question": ITEM.question, "top_k": 4, "collection": None,
                   "filters": {"document_ids": []}, "stream": False}
    assert api.polls == {"j-rail.txt": 1, "j-bees.txt": 1}  # polled until done


def test_answer_from_api_reads_the_evidence_fields() -> None:
    answer = answer_from_api(ANSWER | EVIDENCE)
    assert (answer.text, answer.mode, answer.groundedness) == ("Platform 9 [1].", "quote", 0.5)
    assert answer.generated_text == "Platform 9 and 3/4 [1]."
    assert answer.evidence == (Quote("The train leaves from platform 9.", "d-rail", "rail.txt", 0,
                                     33, None, ("Trains", "Departures"), 0.8, 1, 1),)
    assert answer.sentences == (SentenceCheck("Platform 9 and 3/4 [1].", False, 0.5, ("3/4",),
                                              0),)
    assert (answer.usage.prompt_tokens, answer.timings.total_ms) == (40, 90.0)


def test_answer_from_api_reads_the_short_answer() -> None:
    span = {"quote": 0, "start": 25, "end": 35}
    answer = answer_from_api(ANSWER | EVIDENCE | {"short_answer": "platform 9",
                                                  "short_answer_span": span})
    assert answer.short_answer == ShortAnswer("platform 9", 0, 25, 35)
    unplaced = answer_from_api(ANSWER | {"short_answer": "9", "short_answer_span": None})
    assert unplaced.short_answer == ShortAnswer("9")
    assert answer_from_api(ANSWER | {"short_answer": None}).short_answer is None


def test_answer_from_api_of_an_older_server() -> None:
    answer = answer_from_api(ANSWER)  # none of the evidence fields, nor evidence_ms, check_ms
    assert (answer.mode, answer.groundedness, answer.evidence, answer.sentences) == (
        "generated", 0.0, (), ())
    assert answer.citations[0].chunk_id == 7 and answer.timings.check_ms == 0.0


def test_answer_from_api_rejects_a_body_off_the_contract() -> None:
    with pytest.raises(EvalError, match="unexpected body"):
        answer_from_api({k: v for k, v in ANSWER.items() if k != "answer"})
    quote = EVIDENCE["evidence"][0] | {"colour": "red"}  # type: ignore[operator]
    with pytest.raises(EvalError, match="unexpected body"):
        answer_from_api(ANSWER | EVIDENCE | {"evidence": [quote]})


def test_http_target_scores_the_evidence() -> None:
    api = FakeApi(answer=ANSWER | EVIDENCE)
    target = HttpTarget(_client(api), poll_s=0.0)
    result = run_suite(_suite(), target, ingest_corpus(_suite(), target, lambda _: None),
                       RunOptions())
    row = result["items"][0]
    assert (row["mode"], row["evidence"][0]["document"]) == ("quote", "rail.txt")
    assert (row["scores"]["evidence_hit@1"], row["scores"]["answer_groundedness"]) == (1.0, 0.5)


def test_http_target_names_a_failed_document() -> None:
    target = HttpTarget(_client(FakeApi(job_states=("running", "failed"))), poll_s=0.0)
    with pytest.raises(EvalError, match="'rail.txt' did not ingest: no text in file"):
        ingest_corpus(_suite(), target, lambda _: None)


def test_http_target_reports_the_api_message() -> None:
    target = HttpTarget(_client(FakeApi(), key="wrong"), poll_s=0.0)
    with pytest.raises(EvalError, match="POST /v1/documents answered 401: No or bad key. Send"):
        ingest_corpus(_suite(), target, lambda _: None)


@pytest.fixture()
def api_client(make_service: Any, tmp_path: Path) -> Iterator[httpx.Client]:
    """The real app over a loaded engine (shared models), with an ask+ingest key."""
    from litestar.testing import TestClient

    from api.app import create_app
    from rag.settings import Settings

    service = make_service(max_new_tokens=16, top_k=3)
    settings = Settings(data_dir=service.settings.data_dir, rate_limit_per_minute=0,
                        api_keys={KEY: ["ask", "ingest"]})
    with TestClient(create_app(settings, service=service), timeout=300) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the API did not get ready"
            time.sleep(0.1)
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client


@pytest.mark.slow
def test_http_target_against_the_real_api(api_client: httpx.Client) -> None:
    target = HttpTarget(api_client, poll_s=0.1)
    corpus = ingest_corpus(_suite(), target, lambda _: None)
    assert set(corpus.keys.values()) == {"rail.txt", "bees.txt"}
    result = run_suite(_suite(), target, corpus, RunOptions())
    row = result["items"][0]
    assert row["error"] is None, row["error"]
    assert row["citations"] and row["scores"]["hit@1"] == 1.0
    assert row["timings"]["total_ms"] > 0 and result["index_version"]
    assert row["mode"] in result["aggregates"]["modes"]  # the API's mode, one of the three
    assert {q["document"] for q in row["evidence"]} <= {"rail.txt", "bees.txt"}

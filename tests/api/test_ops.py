"""Health, readiness (models, index, Redis), metrics, the OpenAPI schema and the widget files."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from ingest.queue import queue_url
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import ASK_KEY, KEYS, ingest_corpus, private_redis, serving
from tests.conftest import REDIS_URL
from tests.ingest.helpers import wait_for

pytestmark = pytest.mark.slow


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_not_ready_while_models_cannot_load(tmp_path: Path, generator: Any) -> None:
    settings = Settings(data_dir=tmp_path / "data", embedding_model=str(tmp_path / "missing"))
    app = create_app(settings, service=RagService(settings, generator=generator))
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        for _ in range(200):
            ready = client.get("/ready")
            if "missing" in str(ready.json()["reasons"]):
                break
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["checks"]["models"] is False
        asked = client.post("/v1/ask", json={"question": "anything?"})
        assert asked.status_code == 503 and asked.json()["error"] == "NotReady"
        assert "/ready" in asked.json()["hint"]


def test_ready_when_the_index_is_unreadable(corpus_service: RagService, tmp_path: Path) -> None:
    with serving(corpus_service) as client:
        assert client.get("/ready").json() == {
            "ready": True, "reasons": [], "checks": {"models": True, "index": True},
            "index_log": None}
        index = corpus_service.index.index
        assert index is not None
        directory = index.directory
        try:
            index.directory = tmp_path  # a manifest that is not JSON
            (tmp_path / "manifest.json").write_text("{not json")
            ready = client.get("/ready")
        finally:
            index.directory = directory
        assert ready.status_code == 503 and ready.json()["checks"]["index"] is False
        assert "unreadable" in ready.json()["reasons"][0]


def test_distributed_mode_caches_in_redis_and_is_ready(
    make_service: Any, tmp_path: Path, redis_client: Any
) -> None:
    service = make_service(redis_url=REDIS_URL, max_new_tokens=16)
    ingest_corpus(service, tmp_path / "corpus")
    with serving(service, redis_url=REDIS_URL) as client:
        ready = client.get("/ready").json()
        assert ready["ready"] is True and ready["checks"]["redis"] is True
        question = {"question": "Which platform does the night train leave from?"}
        assert client.post("/v1/ask", json=question).json()["cached"] is False
        assert redis_client.keys("rag:answer:*")
        assert client.post("/v1/ask", json=question).json()["cached"] is True


def test_redis_going_away_mid_run(make_service: Any, tmp_path: Path) -> None:
    with private_redis() as redis:
        service = make_service(redis_url=redis.url, max_new_tokens=16)
        ingest_corpus(service, tmp_path / "corpus")
        with serving(service, redis_url=redis.url, rate_limit_per_minute=100) as client:
            question = {"question": "When is the highest tide in the harbour?"}
            assert client.post("/v1/ask", json=question).json()["cached"] is False
            assert client.post("/v1/ask", json=question).json()["cached"] is True

            redis.stop()
            ready = client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"models": True, "index": True, "redis": False}
            assert "Redis is unreachable" in ready.json()["reasons"][0]
            # Asks are still answered, with the cache bypassed.
            for stream in (False, True):
                answer = client.post("/v1/ask", json={**question, "stream": stream})
                assert answer.status_code == 200
            assert answer.text.rstrip().endswith("}") and '"cached":false' in answer.text
            assert client.get("/health").status_code == 200
            scrape = client.get("/metrics")  # the queue's depth is unknown, the scrape works
            assert scrape.status_code == 200 and metric(scrape.text, "rag_ingest_queue_depth") == 0

            redis.start()  # back (empty): ready again, and caching again
            assert client.get("/ready").status_code == 200
            assert client.post("/v1/ask", json=question).json()["cached"] is False
            assert client.post("/v1/ask", json=question).json()["cached"] is True


def test_the_readme_names_metrics_as_they_are_exposed(corpus_service: RagService) -> None:
    """Every `rag_...` name the README gives is a sample name /metrics exposes (a counter's
    samples end in _total), after an ask has made each family report."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(rag_[a-z_]+)[{`]", readme))
    assert {"rag_prefix_cache_total", "rag_ingest_queue_depth"} <= named
    with serving(corpus_service) as client:
        client.post("/v1/ask", json={"question": "Who is the beekeeper?"})
        text = client.get("/metrics").text
    exposed = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    assert named <= exposed, named - exposed


def test_metrics_count_requests_tokens_cache_and_index(
    corpus_service: RagService,
) -> None:
    with serving(corpus_service) as client:
        before = client.get("/metrics").text
        question = {"question": "How much honey does a hive produce each summer?"}
        client.post("/v1/ask", json=question)
        client.post("/v1/ask", json=question)
        after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    cached_before = metric(before, "rag_answer_cache_total", result="hit")
    assert metric(text, "rag_answer_cache_total", result="hit") == cached_before + 1
    assert metric(text, "rag_answer_cache_total", result="miss") >= 1
    assert metric(text, "rag_tokens_total", kind="completion") > metric(
        before, "rag_tokens_total", kind="completion")
    assert metric(text, "rag_ask_seconds_count", cached="true", stream="false") >= 1
    assert metric(text, "rag_first_token_seconds_count") >= 1
    assert metric(text, "rag_http_requests_total", path="/v1/ask", method="POST",
                  status_code="200") >= 2
    assert metric(text, "rag_http_request_duration_seconds_count", path="/v1/ask",
                  status_code="200") >= 2
    assert metric(text, "rag_generator_steps_total") > metric(before, "rag_generator_steps_total")
    lookups = sum(metric(text, "rag_prefix_cache_total", result=r) for r in ("hit", "miss"))
    assert lookups > sum(metric(before, "rag_prefix_cache_total", result=r)
                         for r in ("hit", "miss"))
    assert metric(text, "rag_generator_batch_size") == 0  # nothing is generating now
    drafts = sum(metric(text, "rag_generator_lookup_drafts_total", result=r)
                 for r in ("accepted", "rejected"))
    assert drafts > sum(metric(before, "rag_generator_lookup_drafts_total", result=r)
                        for r in ("accepted", "rejected"))  # a lone answer drafts tokens
    assert corpus_service.index.loaded
    assert metric(text, "rag_index_vectors") == corpus_service.index.index.count > 0


def test_a_full_generator_queue_answers_503_with_retry_after(
    corpus_service: RagService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = corpus_service.generator.engine  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "max_batch", 0)  # every ask finds the queue full
    monkeypatch.setattr(engine, "max_waiting", 0)
    with serving(corpus_service) as client:
        refused = client.post("/v1/ask", json={"question": "Who keeps the bees in winter?"})
        streamed = client.post("/v1/ask", json={"question": "Who keeps bees in winter?",
                                                "stream": True})
        text = client.get("/metrics").text
    for response in (refused, streamed):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == str(engine.retry_after_s)
        assert response.json()["error"] == "Overloaded"
    assert metric(text, "rag_generator_rejected_total") >= 2


def hold_jobs(service: RagService, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Jobs that start wait for the returned event before they process their document."""
    held = threading.Event()
    process = service.documents.process

    def held_process(*args: Any, **kwargs: Any) -> Any:
        held.wait(60)
        return process(*args, **kwargs)

    monkeypatch.setattr(service.documents, "process", held_process)
    return held


def test_metrics_report_the_jobs_waiting_in_the_ingestion_queue(
    queued_service: RagService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads wait in the real queue: the embedded one's consumer is busy with the first job
    (running, so not counted); SAQ has no worker. Cancelling and deleting take jobs out."""
    embedded = queue_url(queued_service.settings) is None
    held = hold_jobs(queued_service, monkeypatch)
    try:
        with serving(queued_service) as client:
            def depth() -> float:
                return metric(client.get("/metrics").text, "rag_ingest_queue_depth")

            assert depth() == 0
            files = [("file", (f"berth-{n}.txt", f"Berth {n} opens at {n + 5}:15.".encode()))
                     for n in range(4)]
            response = client.post("/v1/documents", files=files)
            assert response.status_code == 202, response.text
            docs = response.json()["documents"]
            running = 0
            if embedded:
                wait_for(lambda: client.get(f"/v1/jobs/{docs[0]['job_id']}").json()["state"]
                         == "running", 30, 0.05, "the first job to start")
                running = 1
            assert depth() == 4 - running
            assert client.post(f"/v1/jobs/{docs[3]['job_id']}/cancel").status_code == 200
            assert client.delete(f"/v1/documents/{docs[2]['document_id']}").status_code == 200
            assert depth() == 2 - running
            if embedded:  # let the consumer go: the queue drains
                held.set()
                wait_for(lambda: all(client.get(f"/v1/jobs/{d['job_id']}").json()["state"]
                                     == "done" for d in docs[:2]), 120, 0.1, "the jobs")
            else:
                assert client.post(f"/v1/jobs/{docs[1]['job_id']}/cancel").status_code == 200
                assert depth() == 1
                assert client.post(f"/v1/jobs/{docs[0]['job_id']}/cancel").status_code == 200
            assert depth() == 0
    finally:
        held.set()


def test_openapi_describes_every_route_its_errors_and_an_example(
    corpus_service: RagService,
) -> None:
    with serving(corpus_service, api_keys=KEYS) as client:
        schema = client.get("/schema/openapi.json").json()
        assert client.get("/schema").status_code == 200
    paths = schema["paths"]
    for path in ("/v1/ask", "/health", "/ready", "/metrics", "/widget.js", "/"):
        assert path in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("description"), f"{method} {path} has no description"
    ask = paths["/v1/ask"]["post"]
    assert set(ask["responses"]) >= {"200", "400", "401", "403", "415", "422", "429", "503"}
    assert "text/event-stream" in ask["responses"]["200"]["description"]
    assert ask["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorOut")
    example = ask["requestBody"]["content"]["application/json"]["schema"]["examples"][0]
    assert example["question"] and ask["requestBody"]["required"] is True
    assert "event" in ask["description"] and "ask" in ask["description"]


def test_widget_script_and_demo_page(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS, widget_key=ASK_KEY) as client:
        script = client.get("/widget.js")
        page = client.get("/")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "attachShadow" in script.text and "getReader" in script.text
    assert page.headers["content-type"].startswith("text/html")
    assert f'<script src="/widget.js" data-key="{ASK_KEY}"></script>' in page.text


OPENAI_PATHS = {"/v1/chat/completions", "/v1/models"}


def test_every_error_status_of_every_route_uses_the_one_error_schema(
    corpus_service: RagService,
) -> None:
    """Each documented error has ErrorOut's schema and an example that is what the mapper
    sends; OPTIONS answers the methods the document lists for its path."""
    from api.errors import ErrorOut

    with serving(corpus_service, api_keys=KEYS) as client:
        schema = client.get("/schema/openapi.json").json()
        allow = {path: client.options(re.sub(r"\{[^}]+\}", "x", path.replace("{page}", "1"))
                                      ).headers["allow"]
                 for path in schema["paths"]}  # {page} is a number
    fields = set(ErrorOut.model_fields)
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) == fields
    for path, operations in schema["paths"].items():
        documented = {m.upper() for m in operations} | {"OPTIONS"}
        assert set(allow[path].split(", ")) == documented, path
        for method, operation in operations.items():
            statuses = {int(s) for s in operation["responses"]}
            if path.startswith("/v1/"):
                assert {400, 401, 403, 429, 503} <= statuses, (method, path)
            for status, response in operation["responses"].items():
                if int(status) < 400 or path == "/ready":
                    continue
                content = response["content"]["application/json"]
                if path in OPENAI_PATHS:  # OpenAI clients read OpenAI's error shape there
                    assert content["schema"]["$ref"] == "#/components/schemas/OpenAIErrorOut"
                    continue
                assert content["schema"]["$ref"] == "#/components/schemas/ErrorOut"
                [example] = content["examples"].values()
                body = example["value"]
                assert {"error", "message", "hint"} <= set(body) <= fields, body
                ErrorOut.model_validate(body)
    documents = schema["paths"]["/v1/documents/{document_id}"]
    assert "404" in documents["get"]["responses"]
    upload = schema["paths"]["/v1/documents"]["post"]["responses"]
    assert {"413", "415", "422"} <= set(upload)
    assert "404" in schema["paths"]["/v1/ask"]["post"]["responses"]  # unknown collection
    streamed = schema["paths"]["/v1/ask"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(streamed)

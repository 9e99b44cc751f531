"""Issue 22's boundary suite: two tenants, a restricted group, and every read path tried across
the boundary, in SQLite and PostgreSQL modes, with the answer cache and conversations in real
Redis. A leak is any of the other side's secret words in any response body (answers, streamed
tokens, citations, evidence, listings), or a citation of a document the key may not read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from litestar.testing import TestClient

from api.app import create_app
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import parse_sse, wait_ready
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.slow

ACME_ASK = "acme-ask-2f7c9d1e5b40"  # tenant acme, no groups
ACME_LEGAL = "acme-legal-8b1d3f6a2c97"  # tenant acme, group legal
ACME_ADMIN = "acme-admin-5e9a7c3b1d22"
GLOBEX = "globex-all-7d2b8e4f1a63"  # tenant globex: asks and uploads
OPERATOR = "operator-3c6f9a2e8d15"  # tenant *: every tenant
KEYS: dict[str, Any] = {
    ACME_ASK: {"scopes": ["ask"], "tenant": "acme"},
    ACME_LEGAL: {"scopes": ["ask", "ingest"], "tenant": "acme", "groups": ["legal"]},
    ACME_ADMIN: {"scopes": ["admin"], "tenant": "acme"},
    GLOBEX: {"scopes": ["ask", "ingest"], "tenant": "globex"},
    OPERATOR: {"scopes": ["admin"], "tenant": "*"},
}

# Each tenant's text says the same things with other figures, so a leak shows as a word.
ACME_POLICY = ("The vacation allowance is 31 days per year. Requests go to the Harbour office "
               "in Quillby.")
ACME_SECRET = "The settlement code is ZEBRA-7741. It was agreed in Marlowe court."
GLOBEX_POLICY = ("The vacation allowance is 12 days per year. Requests go to the Summit office "
                 "in Vantor.")
GLOBEX_OLD = "The vacation allowance was 9 days per year in 2015, set by the Juniper board."
ACME_WORDS = ("Quillby", "Harbour")
SECRET_WORDS = ("ZEBRA", "Marlowe")
GLOBEX_WORDS = ("Vantor", "Summit", "Juniper")
ALLOWANCE = "What is the vacation allowance per year, and where do requests go?"
SETTLEMENT = "What is the settlement code, and where was it agreed?"
# What each key must never see, and the documents (labels) it may read.
FORBIDDEN = {ACME_ASK: SECRET_WORDS + GLOBEX_WORDS, ACME_LEGAL: GLOBEX_WORDS,
             ACME_ADMIN: GLOBEX_WORDS, GLOBEX: ACME_WORDS + SECRET_WORDS}
READS = {ACME_ASK: {"acme-policy"}, ACME_LEGAL: {"acme-policy", "acme-secret"},
         ACME_ADMIN: {"acme-policy", "acme-secret"},
         GLOBEX: {"globex-policy", "globex-history"}}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Deployment:
    client: TestClient[Any]
    service: RagService
    ids: dict[str, str] = field(default_factory=dict)  # label -> document id
    jobs: dict[str, str] = field(default_factory=dict)  # label -> its ingestion job

    def upload(self, key: str, label: str, name: str, text: str, **form: str) -> dict[str, Any]:
        response = self.client.post("/v1/documents", headers=auth(key), data=form,
                                    files=[("file", (name, text.encode()))])
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        item = body["documents"][0]
        self.ids[label], self.jobs[label] = item["document_id"], item["job_id"]
        for _ in range(1200):
            job = self.client.get(f"/v1/jobs/{item['job_id']}", headers=auth(key)).json()
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert job["state"] == "done", job
        return body

    def ask(self, key: str, question: str, **extra: Any) -> dict[str, Any]:
        response = self.client.post("/v1/ask", headers=auth(key),
                                    json={"question": question, **extra})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def readable(self, key: str) -> set[str]:
        return {self.ids[label] for label in READS[key]}


def leaks(text: str, words: tuple[str, ...]) -> list[str]:
    """The words of `words` that appear in `text` (whole words)."""
    return [w for w in words if re.search(rf"\b{re.escape(w)}\b", text)]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               embedder: object, generator: object, models_dir: Path) -> Iterator[Deployment]:
    """Two tenants over one service, the cache and conversations in Redis, the store in SQLite
    or PostgreSQL; acme's settlement document readable by its `legal` group only."""
    from tests.conftest import throwaway_database

    root = tmp_path_factory.mktemp(f"access-{request.param}")
    redis.Redis.from_url(REDIS_URL).flushdb()
    with throwaway_database() if request.param == "postgres" else no_database() as url:
        settings = Settings(data_dir=root / "data", converted_models_dir=models_dir,
                            redis_url=REDIS_URL, queue="embedded", database_url=url,
                            api_keys=KEYS, max_new_tokens=24, top_k=3, rate_limit_per_minute=0)
        service = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
        with TestClient(create_app(settings, service=service)) as client:
            wait_ready(client.get, 120)
            made = Deployment(client, service)
            made.upload(ACME_LEGAL, "acme-policy", "policy.md", ACME_POLICY,
                        metadata='{"year": 2024}')
            made.upload(ACME_LEGAL, "acme-secret", "settlement.md", ACME_SECRET,
                        access='["legal"]')
            made.upload(GLOBEX, "globex-policy", "policy.md", GLOBEX_POLICY,
                        metadata='{"year": 2024}')
            made.upload(GLOBEX, "globex-history", "history.md", GLOBEX_OLD,
                        metadata='{"year": 2015}')
            yield made
        service.close()
    redis.Redis.from_url(REDIS_URL).flushdb()


@contextmanager
def no_database() -> Iterator[None]:
    yield None


def cited(answer: dict[str, Any]) -> set[str]:
    """The documents an answer's citations and evidence name."""
    return ({c["document_id"] for c in answer["citations"]}
            | {q["document_id"] for q in answer["evidence"]})


def refused(client: TestClient[Any]) -> dict[str, float]:
    """rag_access_refused_total by kind, from /metrics."""
    text = client.get("/metrics", headers=auth(OPERATOR)).text
    found = re.findall(r'^rag_access_refused_total\{kind="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {kind: float(value) for kind, value in found}


ASKERS = (ACME_ASK, ACME_LEGAL, GLOBEX)


def test_answers_cite_and_say_only_what_the_key_may_read(deployment: Deployment) -> None:
    for key in ASKERS:
        for question in (ALLOWANCE, SETTLEMENT):
            answer = deployment.ask(key, question)
            assert cited(answer) <= deployment.readable(key), (key, question)
            assert not leaks(json.dumps(answer), FORBIDDEN[key]), (key, question, answer)
    # the filter is no blindfold: the group's own key is answered from the restricted file
    legal = deployment.ask(ACME_LEGAL, SETTLEMENT)
    assert deployment.ids["acme-secret"] in cited(legal)
    assert deployment.ids["globex-policy"] in cited(deployment.ask(GLOBEX, ALLOWANCE))


def test_a_cached_answer_is_served_only_to_keys_that_may_read_its_sources(
    deployment: Deployment,
) -> None:
    question = "Which code settles the case, and in which court was it agreed?"
    first = deployment.ask(ACME_LEGAL, question)
    assert deployment.ids["acme-secret"] in cited(first)
    assert deployment.ask(ACME_LEGAL, question)["cached"] is True
    for key in (ACME_ASK, GLOBEX):
        other = deployment.ask(key, question)
        assert other["cached"] is False, key
        assert not leaks(json.dumps(other), FORBIDDEN[key]), other
        assert cited(other) <= deployment.readable(key)


def test_a_streamed_answer_sends_nothing_the_key_may_not_read(deployment: Deployment) -> None:
    for key in (ACME_ASK, GLOBEX):
        response = deployment.client.post(
            "/v1/ask", headers=auth(key), json={"question": SETTLEMENT, "stream": True})
        assert response.status_code == 200
        assert not leaks(response.text, FORBIDDEN[key]), response.text
        events = parse_sse(response.text)
        citations = next(e.json() for e in events if e.event == "citations")
        assert {c["document_id"] for c in citations} <= deployment.readable(key)


def test_the_chat_route_answers_only_from_what_the_key_may_read(deployment: Deployment) -> None:
    model = deployment.client.get("/v1/models", headers=auth(GLOBEX)).json()["data"][0]["id"]
    for key in (ACME_ASK, GLOBEX):
        for stream in (False, True):
            response = deployment.client.post(
                "/v1/chat/completions", headers=auth(key),
                json={"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": SETTLEMENT}]})
            assert response.status_code == 200, response.text
            assert not leaks(response.text, FORBIDDEN[key]), response.text
            if not stream:
                rag = response.json()["choices"][0]["message"]["rag"]
                assert cited(rag) <= deployment.readable(key)


def test_conversations_and_follow_ups_belong_to_their_key(deployment: Deployment) -> None:
    client = deployment.client
    first = deployment.ask(ACME_LEGAL, SETTLEMENT)
    conversation = first["conversation"]
    before = refused(client).get("conversation", 0.0)
    for key in (ACME_ASK, GLOBEX):  # the same tenant's other key is no owner either
        follow = client.post("/v1/ask", headers=auth(key), json={
            "question": "And in which court?", "conversation": conversation})
        assert follow.status_code == 404, follow.text
        assert not leaks(follow.text, SECRET_WORDS)
        assert client.get(f"/v1/conversations/{conversation}",
                          headers=auth(key)).status_code == 404
        listed = client.get("/v1/conversations", headers=auth(key)).json()
        assert conversation not in json.dumps(listed)
    assert refused(client).get("conversation", 0.0) >= before + 2
    # the owner's follow-up continues, and another key's own follow-up stays on its side
    own = client.post("/v1/ask", headers=auth(ACME_LEGAL), json={
        "question": "In which court was it agreed?", "conversation": conversation})
    assert own.status_code == 200 and own.json()["conversation"] == conversation
    theirs = deployment.ask(GLOBEX, ALLOWANCE)
    again = deployment.ask(GLOBEX, "Where do those requests go?",
                           conversation=theirs["conversation"])
    assert cited(again) <= deployment.readable(GLOBEX)
    assert not leaks(json.dumps(again), FORBIDDEN[GLOBEX])


def test_listings_show_each_key_its_own_documents(deployment: Deployment) -> None:
    ids = deployment.ids
    expected = {
        GLOBEX: {ids["globex-policy"], ids["globex-history"]},
        ACME_LEGAL: {ids["acme-policy"], ids["acme-secret"]},
        ACME_ADMIN: {ids["acme-policy"], ids["acme-secret"]},
        OPERATOR: set(ids.values()),
    }
    for key, want in expected.items():
        response = deployment.client.get("/v1/documents", headers=auth(key))
        assert response.status_code == 200, response.text
        got = {item["id"] for item in response.json()["items"]}
        assert got == want, key
        assert response.json()["total"] == len(want)
    # an ask-only key lists nothing at all
    assert deployment.client.get("/v1/documents", headers=auth(ACME_ASK)).status_code == 403


def test_another_tenants_documents_and_jobs_are_not_found(deployment: Deployment) -> None:
    client, ids = deployment.client, deployment.ids
    before = refused(client)
    for label in ("acme-policy", "acme-secret"):
        doc = ids[label]
        assert client.get(f"/v1/documents/{doc}", headers=auth(GLOBEX)).status_code == 404
        job = client.get(f"/v1/jobs/{deployment.jobs[label]}", headers=auth(GLOBEX))
        assert job.status_code == 404
        gone = client.delete(f"/v1/documents/{doc}", headers=auth(GLOBEX))
        assert gone.status_code == 200 and gone.json()["deleted"] is False
        assert client.get(f"/v1/documents/{doc}", headers=auth(ACME_ADMIN)).status_code == 200
    after = refused(client)
    assert after.get("document", 0.0) >= before.get("document", 0.0) + 2
    assert after.get("job", 0.0) >= before.get("job", 0.0) + 2
    assert "acme" not in "".join(after)  # kinds only, never a document or tenant


def test_view_urls_open_only_for_their_document_and_readers(deployment: Deployment) -> None:
    client, secret = deployment.client, deployment.ids["acme-secret"]
    answer = deployment.ask(ACME_LEGAL, SETTLEMENT)
    url = next(c["view_url"] for c in answer["citations"] if c["document_id"] == secret)
    assert client.get(url).status_code == 200  # the token alone opens it, as a browser tab does
    parts = urlsplit(url)
    untokened = parts.path + "?" + "&".join(
        p for p in parts.query.split("&") if not p.startswith("token="))
    for key in (ACME_ASK, GLOBEX):
        page = client.get(untokened, headers=auth(key))
        assert page.status_code == 404, (key, page.text)
        assert not leaks(page.text, SECRET_WORDS)
    other = url.replace(secret, deployment.ids["globex-policy"])
    assert client.get(other).status_code == 403  # a token opens its own document only


def test_metadata_filters_narrow_before_ranking(deployment: Deployment) -> None:
    ids = deployment.ids
    old = deployment.ask(GLOBEX, "What was the vacation allowance?",
                         filters={"metadata": {"year": {"$lte": 2020}}})
    assert cited(old) <= {ids["globex-history"]} and cited(old)
    new = deployment.ask(GLOBEX, "What was the vacation allowance?",
                         filters={"metadata": {"year": {"$gte": 2020}, "missing": {"$ne": 1}}})
    assert cited(new) == set() or cited(new) <= {ids["globex-policy"]}
    bad = deployment.client.post("/v1/ask", headers=auth(GLOBEX), json={
        "question": ALLOWANCE, "filters": {"metadata": {"year": {"$gt": 2020}}}})
    assert bad.status_code == 400 and "year" in bad.json()["message"], bad.text
    model = deployment.client.get("/v1/models", headers=auth(GLOBEX)).json()["data"][0]["id"]
    chat = deployment.client.post("/v1/chat/completions", headers=auth(GLOBEX), json={
        "model": model, "messages": [{"role": "user", "content": "What was the allowance?"}],
        "filters": {"metadata": {"year": 2015}}})
    assert chat.status_code == 200, chat.text
    assert cited(chat.json()["choices"][0]["message"]["rag"]) <= {ids["globex-history"]}


def test_feedback_rates_only_the_keys_own_answers(deployment: Deployment) -> None:
    answer = deployment.ask(ACME_LEGAL, ALLOWANCE)
    rating = {"answer_id": answer["answer_id"], "rating": "up"}
    for key in (ACME_ASK, GLOBEX):
        response = deployment.client.post("/v1/feedback", headers=auth(key), json=rating)
        assert response.status_code == 404, response.text
    assert deployment.client.post("/v1/feedback", headers=auth(ACME_LEGAL),
                                  json=rating).status_code == 201


def test_the_same_bytes_in_two_tenants_are_two_documents(deployment: Deployment) -> None:
    body = deployment.upload(GLOBEX, "globex-copy", "copy.md", ACME_POLICY)
    item = body["documents"][0]
    assert item["duplicate"] is False and item["document_id"] != deployment.ids["acme-policy"]
    assert not leaks(json.dumps(body), ACME_WORDS)


def test_rag_eval_over_http_sees_only_its_keys_documents(deployment: Deployment) -> None:
    from eval.suites import CorpusDocument
    from eval.targets import HttpTarget

    client = deployment.client
    client.headers["Authorization"] = f"Bearer {GLOBEX}"
    try:
        target = HttpTarget(client, poll_s=0.05)
        keys = target.ingest([CorpusDocument("memo", "memo.md", text=GLOBEX_POLICY + " Memo.")],
                             lambda n: None)
        answer = target.ask(SETTLEMENT, 3)
    finally:
        del client.headers["Authorization"]
    assert keys["memo"] not in deployment.ids.values()
    assert {c.document_id for c in answer.citations} <= deployment.readable(GLOBEX) | {
        keys["memo"]}
    assert not leaks(answer.text + json.dumps([c.text for c in answer.citations]),
                     FORBIDDEN[GLOBEX])

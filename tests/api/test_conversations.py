"""Conversations over /v1/ask, their routes, feedback and its export as a suite that runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eval.cli import eval_app
from eval.runner import RunOptions, ingest_corpus, run_suite
from eval.suites import load_suite
from eval.targets import LocalTarget
from rag.access import REFUSED
from rag.service import RagService
from tests.api.helpers import ADMIN_KEY, ASK_KEY, KEYS, serving
from tests.api.helpers import ingest_corpus as ingest

pytestmark = pytest.mark.slow

BEES = "Who is the beekeeper of the Larkspur apiary?"
FOLLOW_UP = "How much honey do they produce per hive?"
ASKER = {"Authorization": f"Bearer {ASK_KEY}"}
OTHER = {"X-API-Key": ADMIN_KEY}


def test_a_conversation_over_ask_is_listed_continued_and_deleted(
    corpus_service: RagService,
) -> None:
    with serving(corpus_service, api_keys=KEYS) as client:
        first = client.post("/v1/ask", json={"question": BEES}, headers=ASKER).json()
        conversation = first["conversation"]
        assert conversation.startswith("conv_") and first["answer_id"].startswith("ans_")
        assert first["history_turns"] == 0 and first["note"] == ""

        follow = client.post("/v1/ask", json={"question": FOLLOW_UP, "stream": True,
                                              "conversation": conversation}, headers=ASKER)
        done = [line for line in follow.text.splitlines() if line.startswith("data: {")][-1]
        assert json.loads(done[6:])["history_turns"] == 1
        assert json.loads(done[6:])["conversation"] == conversation

        listed = client.get("/v1/conversations", headers=ASKER).json()["conversations"]
        assert listed[0]["id"] == conversation and listed[0]["title"] == BEES
        assert conversation not in [c["id"] for c in
                                    client.get("/v1/conversations", headers=OTHER).json()[
                                        "conversations"]]
        shown = client.get(f"/v1/conversations/{conversation}", headers=ASKER).json()
        assert [t["question"] for t in shown["turns"]] == [BEES, FOLLOW_UP]
        assert shown["turns"][0]["documents"][0] == "bees.txt"
        assert client.get(f"/v1/conversations/{conversation}", headers=OTHER).status_code == 404

        assert client.delete(f"/v1/conversations/{conversation}", headers=ASKER).status_code \
            == 204
        gone = client.post("/v1/ask", json={"question": FOLLOW_UP,
                                            "conversation": conversation}, headers=ASKER)
        assert gone.status_code == 404, gone.text
        assert "list your conversations" in gone.json()["hint"]
        both = client.post("/v1/ask", headers=ASKER, json={
            "question": FOLLOW_UP, "conversation": conversation,
            "history": [{"question": BEES, "answer": "Miriam Oduya."}]})
        assert both.status_code == 422, both.text


def refused_since(before: dict[str, int], kind: str) -> int:
    """How many reads of `kind` were refused since `before` (a REFUSED snapshot)."""
    return REFUSED.snapshot().get(kind, 0) - before.get(kind, 0)


def test_another_keys_conversation_is_unknown_to_every_route(
    corpus_service: RagService,
) -> None:
    """Not listed, and 404 exactly as an unknown id on get, delete and continuing it; those
    refusals are counted, unknown ids are not; its owner still has it afterwards."""
    with serving(corpus_service, api_keys=KEYS) as client:
        mine = client.post("/v1/ask", json={"question": BEES}, headers=ASKER).json()
        conversation = mine["conversation"]
        before = REFUSED.snapshot()
        listed = client.get("/v1/conversations", headers=OTHER).json()["conversations"]
        assert conversation not in [c["id"] for c in listed]
        for method, headers in ((client.get, OTHER), (client.delete, OTHER)):
            theirs = method(f"/v1/conversations/{conversation}", headers=headers)
            unknown = method("/v1/conversations/conv_nope", headers=headers)
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.text.replace(conversation, "conv_nope") == unknown.text
        continued = client.post("/v1/ask", headers=OTHER, json={
            "question": FOLLOW_UP, "conversation": conversation})
        assert continued.status_code == 404, continued.text
        assert refused_since(before, "conversation") == 3
        shown = client.get(f"/v1/conversations/{conversation}", headers=ASKER)
        assert shown.status_code == 200 and len(shown.json()["turns"]) == 1


def test_only_the_key_given_an_answer_rates_it(corpus_service: RagService) -> None:
    """Another key's answer (or chat completion) id is a 404 as an unknown one, counted."""
    with serving(corpus_service, api_keys=KEYS) as client:
        asked = client.post("/v1/ask", json={"question": BEES}, headers=ASKER).json()
        chat = client.post("/v1/chat/completions", headers=ASKER, json={
            "model": corpus_service.asking.model,
            "messages": [{"role": "user", "content": BEES}]}).json()
        before = REFUSED.snapshot()
        for answer_id in (asked["answer_id"], chat["id"]):
            rating = {"answer_id": answer_id, "rating": "up"}
            theirs = client.post("/v1/feedback", json=rating, headers=OTHER)
            unknown = client.post("/v1/feedback", headers=OTHER,
                                  json={**rating, "answer_id": "ans_nope"})
            assert theirs.status_code == unknown.status_code == 404, theirs.text
            assert theirs.json()["hint"] == unknown.json()["hint"]
            assert client.post("/v1/feedback", json=rating, headers=ASKER).status_code == 201
        assert refused_since(before, "feedback") == 2


def test_an_expired_conversation_starts_afresh_and_says_so(
    make_service: Any, tmp_path: Path
) -> None:
    service: RagService = make_service(max_new_tokens=16, conversation_ttl_s=1)
    ingest(service, tmp_path / "corpus")
    with serving(service) as client:
        first = client.post("/v1/ask", json={"question": BEES}).json()
        time.sleep(1.2)
        later = client.post("/v1/ask", json={"question": FOLLOW_UP,
                                             "conversation": first["conversation"]})
        assert later.status_code == 200, later.text
        assert later.json()["history_turns"] == 0 and "expired" in later.json()["note"]
        assert later.json()["conversation"] == first["conversation"]


def test_feedback_becomes_a_suite_that_runs(corpus_service: RagService, tmp_path: Path) -> None:
    with serving(corpus_service) as client:
        first = client.post("/v1/ask", json={"question": BEES}).json()
        follow = client.post("/v1/ask", json={"question": FOLLOW_UP,
                                              "conversation": first["conversation"]}).json()
        up = client.post("/v1/feedback", json={"answer_id": first["answer_id"],
                                               "rating": "up"})
        assert up.status_code == 201, up.text
        down = client.post("/v1/feedback", json={
            "answer_id": follow["answer_id"], "rating": "down", "comment": "no number",
            "expected_answer": "31 kilograms"})
        assert down.status_code == 201 and down.json()["rating"] == "down"
        assert client.post("/v1/feedback", json={"answer_id": "ans_nope", "rating": "up"}
                           ).status_code == 404
        assert client.post("/v1/feedback", json={"answer_id": first["answer_id"],
                                                 "rating": "meh"}).status_code == 400

    out = tmp_path / "feedback.jsonl"
    result = CliRunner().invoke(eval_app, ["export-feedback", "--out", str(out), "--data-dir",
                                           str(corpus_service.settings.data_dir)])
    assert result.exit_code == 0, result.output
    suite = load_suite(out)
    by_answer = {json.loads(line)["feedback"]["answer_id"]: json.loads(line)
                 for line in out.read_text().splitlines()}
    rated_down = by_answer[follow["answer_id"]]
    assert rated_down["answers"] == ["31 kilograms"] and rated_down["history"][0]["question"] \
        == BEES
    assert by_answer[first["answer_id"]]["relevant"][0] == "bees.txt"
    item = next(i for i in suite.items if i.question == FOLLOW_UP and i.answers)
    assert item.followup and item.turn == 2

    target = LocalTarget(corpus_service)
    corpus = ingest_corpus(suite, target, lambda _: None)
    run = run_suite(suite, target, corpus, RunOptions(retrieval_only=True))
    assert run["aggregates"]["errors"] == 0 and run["aggregates"]["followup"]["turns"] >= 1
    scored = next(r for r in run["items"] if r["question"] == BEES)
    assert "bees.txt" in scored["relevant"] and scored["scores"]["hit@3"] == 1.0


def test_feedback_export_reads_postgresql_in_distributed_mode(
    make_service: Any, pg_url: str, tmp_path: Path
) -> None:
    """With RAG_DATABASE_URL the feedback is in PostgreSQL: the export reads it there (not an
    empty SQLite file in a data directory that holds none of it)."""
    service: RagService = make_service(database_url=pg_url, max_new_tokens=16)
    ingest(service, tmp_path / "corpus")
    with serving(service) as client:
        first = client.post("/v1/ask", json={"question": BEES}).json()
        assert client.post("/v1/feedback", json={
            "answer_id": first["answer_id"], "rating": "down",
            "expected_answer": "Miriam Oduya"}).status_code == 201

    out, elsewhere = tmp_path / "feedback.jsonl", tmp_path / "another-machine"
    result = CliRunner(env={"RAG_DATABASE_URL": pg_url, "RAG_REDIS_URL": ""}).invoke(
        eval_app, ["export-feedback", "--out", str(out), "--data-dir", str(elsewhere)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["feedback"]["answer_id"], r["answers"]) for r in rows] == [
        (first["answer_id"], ["Miriam Oduya"])]
    assert "1 down" in result.output

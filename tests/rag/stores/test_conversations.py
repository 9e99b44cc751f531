"""The conversation store: one contract every backend passes (SQLite, PostgreSQL, real Redis),
expiry told apart from an unknown id, and the policy the service follows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rag.ask.conversations import Conversations
from rag.errors import InvalidInput, NotFound
from rag.stores.conversations import (
    ConversationStore,
    PgConversations,
    RedisConversations,
    SqliteConversations,
)
from rag.types import AnswerRecord, Feedback, Turn, new_id
from tests.conftest import REDIS_URL


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
               ttl_s: int = 60) -> ConversationStore:
    if kind == "sqlite":
        store: ConversationStore = SqliteConversations(tmp_path / "c.sqlite3", ttl_s)
    elif kind == "postgres":
        store = PgConversations(request.getfixturevalue("pg_url"), ttl_s)
    else:
        request.getfixturevalue("redis_client")  # a clean database
        store = RedisConversations(REDIS_URL, ttl_s)
    store.open()
    return store


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def record(conversation: str | None, question: str, answer: str = "An answer [1].",
           owner: str = "") -> AnswerRecord:
    return AnswerRecord(new_id("ans"), question, answer, conversation, (), ("a.txt",),
                        owner=owner)


def test_contract(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store(kind, tmp_path, request)
    assert store.lookup("conv_nope") == ("unknown", None)
    first, second = record("conv_1", "What is X?"), record("conv_1", "And its size?")
    store.save(first)
    store.save(second)
    store.save(record("conv_2", "Other topic?", owner="key-b"))
    alone = record(None, "A single ask?")
    store.save(alone)

    state, found = store.lookup("conv_1")
    assert state == "live" and found is not None
    assert [t.question for t in found.turns] == ["What is X?", "And its size?"]
    assert found.title == "What is X?" and found.expires_at > time.time()
    assert store.answer(second.id) == found.turns[1]
    assert store.answer(alone.id) is not None and store.answer("ans_missing") is None
    # Owners see only their own conversations.
    assert [c.id for c in store.recent()] == ["conv_1"]
    assert [c.id for c in store.recent("key-b")] == ["conv_2"]
    assert store.lookup("conv_2") == ("unknown", None)
    assert not store.delete("conv_2")

    assert store.delete("conv_1")
    assert store.lookup("conv_1") == ("unknown", None)
    assert store.answer(first.id) is None
    assert not store.delete("conv_1")

    rating = Feedback(new_id("fb"), alone.id, "down", alone.question, alone.answer,
                      (Turn("q0", "a0"),), ("a.txt",), "wrong", "the right one", time.time())
    store.add_feedback(rating)
    assert store.feedback() == [rating]
    store.close()


def test_expired_conversation_is_told_apart_and_starts_afresh(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store(kind, tmp_path, request, ttl_s=1)
    store.save(record("conv_old", "What is X?"))
    time.sleep(1.2)
    assert store.lookup("conv_old") == ("expired", None)
    assert store.lookup("conv_never") == ("unknown", None)
    assert store.recent() == []
    store.save(record("conv_old", "Fresh start?"))
    state, found = store.lookup("conv_old")
    assert state == "live" and found is not None
    assert [t.question for t in found.turns] == ["Fresh start?"]


def test_policy_history_unknown_and_expired(tmp_path: Path) -> None:
    conversations = Conversations(SqliteConversations(tmp_path / "c.sqlite3", 1), max_turns=2)
    with pytest.raises(NotFound) as unknown:
        conversations.thread("conv_nope", (), keep=True)
    assert "list your conversations" in unknown.value.hint
    with pytest.raises(InvalidInput):
        conversations.thread("conv_1", (Turn("q", "a"),), keep=True)
    fresh = conversations.thread(None, (), keep=True)
    assert fresh.conversation_id and fresh.conversation_id.startswith("conv_")
    assert conversations.thread(None, (), keep=False).conversation_id is None
    for n in range(3):
        conversations.keep(record(fresh.conversation_id, f"q{n}", f"a{n}"))
    thread = conversations.thread(fresh.conversation_id, (), keep=True)
    assert [t.question for t in thread.history] == ["q1", "q2"]  # max_turns, newest kept
    time.sleep(1.2)
    expired = conversations.thread(fresh.conversation_id, (), keep=True)
    assert expired.history == () and "expired" in expired.note
    with pytest.raises(NotFound):
        conversations.rate("ans_nope", "up")


def test_a_continued_conversation_keeps_its_earlier_turns(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store(kind, tmp_path, request, ttl_s=2)
    first = record("conv_long", "First?")
    store.save(first)
    time.sleep(1.2)
    store.save(record("conv_long", "Second?"))
    time.sleep(1.2)  # past the first turn's own TTL, within the conversation's
    state, found = store.lookup("conv_long")
    assert state == "live" and found is not None
    assert [t.question for t in found.turns] == ["First?", "Second?"]
    assert store.answer(first.id) is not None


def test_no_history_when_max_turns_is_zero(tmp_path: Path) -> None:
    conversations = Conversations(SqliteConversations(tmp_path / "c.sqlite3", 60), max_turns=0)
    assert conversations.thread(None, (Turn("q", "a"),), keep=False).history == ()


def test_redis_away_is_not_ready_and_answers_go_on_unkept() -> None:
    from rag.errors import NotReady
    from tests.api.helpers import free_port

    store = RedisConversations(f"redis://127.0.0.1:{free_port()}/0", 60)
    with pytest.raises(NotReady, match="Redis is unreachable"):
        store.lookup("conv_1")
    conversations = Conversations(store, max_turns=4)
    assert conversations.keep(record("conv_1", "What is X?")) is False
    with pytest.raises(NotReady):
        conversations.thread("conv_1", (), keep=True)

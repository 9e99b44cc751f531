"""Conversations through the engine with the packaged models: follow-ups, the cache, notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ask.service import AskRequest
from rag.errors import NotFound
from rag.service import RagService
from rag.types import Query, Turn
from tests.rag.test_service import write_corpus

pytestmark = pytest.mark.slow


@pytest.fixture()
def service(make_service, tmp_path: Path) -> RagService:  # type: ignore[no-untyped-def]
    svc = make_service(max_new_tokens=24)
    for path in write_corpus(tmp_path / "corpus"):
        svc.documents.ingest_file(path)
    return svc  # type: ignore[no-any-return]


def test_a_follow_up_is_retrieved_and_prompted_with_its_history(service: RagService) -> None:
    question = "Who is the beekeeper of the Larkspur apiary?"
    first = service.asking.ask(AskRequest(question, keep=True))
    assert first.id.startswith("ans_") and first.conversation_id
    assert first.history_turns == 0 and first.search == ""

    follow = service.asking.ask(AskRequest("How much honey do they produce per hive?",
                                    conversation_id=first.conversation_id))
    assert follow.conversation_id == first.conversation_id and follow.id != first.id
    assert follow.history_turns == 1
    assert "larkspur" in follow.search and "apiary" in follow.search
    assert follow.citations[0].filename == "bees.txt"
    turns = service.conversations.get(first.conversation_id).turns
    assert [t.id for t in turns] == [first.id, follow.id]
    assert turns[1].history == (Turn(first.question, first.text),)


def test_the_cache_key_holds_the_history(service: RagService) -> None:
    question = "When does it leave?"
    train = (Turn("Which train leaves from platform 9?", "The Aldgate night train [1]."),)
    boats = (Turn("What leaves the harbour of Port Vell?", "Fishing boats [1]."),)
    a = service.asking.ask(AskRequest(question, history=train))
    b = service.asking.ask(AskRequest(question, history=boats))
    again = service.asking.ask(AskRequest(question, history=train))
    assert not a.cached and not b.cached and again.cached
    assert again.text == a.text and again.id != a.id
    assert "aldgate" in a.search and "vell" in b.search and "1" not in a.search.split()
    assert service.asking.retriever is not None
    for answer, wanted in ((a, "rail.txt"), (b, "tides.md")):
        assert service.asking.retriever.retrieve(Query(answer.search, 1))[0].filename == wanted


def test_unknown_conversation_is_not_found(service: RagService) -> None:
    with pytest.raises(NotFound):
        service.asking.ask(AskRequest("Who is the beekeeper?", conversation_id="conv_unknown"))

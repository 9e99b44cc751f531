"""Short answers: the few words of a checked answer that answer a factual question."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.ask.service import AskRequest
from rag.ask.short import factual, locate, short_span
from rag.types import Quote


@pytest.mark.parametrize(("question", "sentence", "short"), [
    ("When was the University of Notre Dame founded?",
     "The University of Notre Dame was founded in 1842 by Father Edward Sorin [1].", "1842"),
    ("What is the Grotto at Notre Dame?",
     "The Grotto at Notre Dame is a Marian place of prayer and reflection [1].",
     "Marian place of prayer and reflection"),
    ("What is the default chunk size?", "The default chunk size is 200 tokens [1].",
     "200 tokens"),
    ("How many tokens do consecutive ones share?", "The answer is 40.", "40"),
    ("Who headlined the show?", "Beyoncé headlined the halftime show with Coldplay [2].",
     "Beyoncé"),
    ("What entity provides help with the management of time for new students?",
     "The First Year of Studies program provides help with time management [1].",
     "First Year of Studies program"),
    ("Which embedding model does the service use by default?",
     "The service uses all-MiniLM-L6-v2 by default [1].", "all-MiniLM-L6-v2"),
    ("In what year did the university open its law school?",
     "The law school opened in 1869 [1].", "1869"),
    ("Where is the headquarters of the Congregation of the Holy Cross?",
     "The Congregation of the Holy Cross is headquartered in Rome, Italy [1].", "Rome"),
    ("How many students enrolled?", "About 1,250 students enrolled in 2014 [1].", "1,250"),
    ("How many stories tall is the library?", "The library is 14-story [1].", "14"),
    ("What percentage was admitted?", "The class admitted 3,577 (19.7%) [1].", "19.7%"),
    ("Which professor sent the first wireless message?",
     "Around 1899, Professor Jerome Green became the first American to send a wireless "
     "message [1].", "Jerome Green"),
    ("Who built the wind tunnel?", "In 1882, Albert Zahm (John Zahm's brother) built the wind "
     "tunnel [1].", "Albert Zahm"),
    ("What port does the API listen on?", "RAG_PORT | 8000 | port the server listens on",
     "RAG_PORT"),
])
def test_the_words_that_say_what_the_question_does_not(question: str, sentence: str,
                                                          short: str) -> None:
    assert short_span(question, "", sentence) == short


@pytest.mark.parametrize(("question", "sentence"), [
    ("How are answers cached?", "Answers are cached in Redis for a day [1]."),
    ("Why is the index rebuilt at start?", "Every process builds its own index [1]."),
    ("Is the cache shared?", "Yes, the cache is shared in Redis [1]."),
    ("Who founded the university?", "The university was founded long ago [1]."),  # no name
    ("When was the school founded?", "The school was founded by monks [1]."),  # no date
    ("Who can delete documents?", "DELETE /v1/documents/{id} removes a document [1]."),
    ("What is the mission of the university?",  # too long to be short
     "Its mission is to educate the minds and hearts of students so that they may serve the "
     "world with wisdom and compassion [1]."),
])
def test_no_short_answer_is_forced(question: str, sentence: str) -> None:
    assert short_span(question, "", sentence) is None


def test_factual_questions_are_the_ones_a_few_words_answer() -> None:
    assert factual("In what year was it founded?") and factual("How many hives are there?")
    assert factual("Who is the beekeeper?") and factual("Which city hosted it?")
    assert not factual("How does the cache work?") and not factual("Why does it abstain?")
    assert not factual("Does the service use a GPU?")


def test_a_follow_ups_retrieval_query_counts_as_said() -> None:
    # "ones" were chunks: the rewritten query says so, so "chunks" answers nothing.
    assert short_span("How many tokens do consecutive ones share?", "chunk size tokens share",
                      "Consecutive chunks share 40 tokens [1].") == "40"


def test_the_short_answer_is_the_evidences_own_text_at_its_offsets() -> None:
    text = "The beekeeper is called  Miriam\nODUYA."
    quotes = (Quote(text="Other words.", document_id="d", filename="f.txt", start=0, end=12,
                    page=None, title_path=(), score=0.5, source=1),
              Quote(text=text, document_id="d", filename="f.txt", start=100,
                    end=100 + len(text), page=None, title_path=(), score=0.9, source=1))
    found = locate("Miriam Oduya", quotes, first=None)
    assert (found.text, found.quote) == ("Miriam\nODUYA", 1)
    assert (found.start, found.end) == (100 + text.index("Miriam"), 100 + len(text) - 1)
    # whole words only; words no quote holds keep no place
    assert locate("Oduy", quotes, first=1).quote is None
    assert locate("Joe Jackson", quotes, first=1).text == "Joe Jackson"


def test_an_ask_carries_a_checked_short_answer(make_service: Any, tmp_path: Path) -> None:
    service = make_service()
    path = tmp_path / "apiary.txt"
    path.write_text("The Larkspur apiary was founded in 1962 by the Oduya family. Honey bees "
                    "there produce 31 kilograms of honey per hive each summer.\n")
    service.documents.ingest_file(path)
    answer = service.asking.ask(AskRequest("In what year was the Larkspur apiary founded?"))
    assert answer.mode in ("generated", "quote")
    short = answer.short_answer
    assert short is not None and short.text == "1962", (answer.text, short)
    assert short.quote is not None and short.start is not None and short.end is not None
    quote = answer.evidence[short.quote]
    assert quote.text[short.start - quote.start : short.end - quote.start] == "1962"
    assert "short" in answer.timings.stages

    how = service.asking.ask(AskRequest("How do the bees make honey in the Larkspur apiary?"))
    assert how.short_answer is None

    off = make_service(short_answers=False)
    off.documents.ingest_file(path)
    plain = off.asking.ask(AskRequest("In what year was the Larkspur apiary founded?"))
    assert plain.short_answer is None and "short" not in plain.timings.stages

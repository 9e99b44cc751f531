"""The check that asks whether the answer answers: the question's kind, and the claim anchored
in the evidence that holds the question's key terms (issue 19.2)."""

from __future__ import annotations

import pytest

from rag.ask.answer_type import AnswerType, answer_type, fits
from rag.ask.check import Judge
from rag.ask.claims import Candidate, answer_support, check_sentence
from rag.types import SentenceCheck

# Super Bowl 50 (Wikipedia): the sentence that answers where and when names neither San Jose
# nor February 1; other sentences of the same passage do.
GAME = [
    "The NFL's 50th championship game, Super Bowl 50, was played on February 7, 2016, at "
    "Levi's Stadium in Santa Clara, California.",
    "The league held Opening Night, its media day, at the SAP Center in San Jose.",
    "Opening Night took place on February 1, 2016.",
]
# The guest performers two sentences on from the one that answers (next to it, the pair of
# sentences would hold both: adjacent sentences count as one piece of evidence).
SHOW = [
    "The Super Bowl 50 halftime show was headlined by the British rock group Coldplay.",
    "CBS broadcast the game in the United States.",
    "Beyoncé and Bruno Mars joined Coldplay as special guest performers.",
]
# rag/samples: the overlap of consecutive chunks, and the prompt budget's sum elsewhere.
CHUNKS = [
    "Documents are cut into windows of **200 tokens** (`RAG_CHUNK_SIZE`).",
    "Consecutive windows share an overlap of **40 tokens** (`RAG_CHUNK_OVERLAP`), so each "
    "window repeats the end of the one before it.",
]
BUDGET = ["With a template of 150 tokens and a question of 25 tokens, the sources get "
          "2048 - 192 - 150 - 25 = 1681 tokens."]


def check_answer_sentence(
    sentence: str, question: str, search: str, asked: AnswerType | None,
    candidates: list[Candidate], sources: dict[int, str], min_overlap: float,
) -> tuple[SentenceCheck, int | None]:
    """`answer_support` of the answer's first sentence, with its best quote (as `Judge`)."""
    check, support = answer_support(sentence, question, search, asked, candidates, sources,
                                     min_overlap, nouns=asked.nouns if asked else frozenset())
    return check, support[0] if support else None


def _pool(*groups: list[str]) -> tuple[list[Candidate], dict[int, str]]:
    """Each group one source (a document), its sentences in order."""
    pool = [Candidate(text, n, f"doc{n}", i) for n, group in enumerate(groups, start=1)
            for i, text in enumerate(group)]
    return pool, {n: " ".join(group) for n, group in enumerate(groups, start=1)}


@pytest.mark.parametrize(
    ("question", "kind", "nouns"),
    [
        ("Who headlined the Super Bowl 50 halftime show?", "agent", ()),
        ("they came due to the hiring of whom?", "agent", ()),
        ("Which person portrayed Knute Rockne in the 1940 movie?", "agent", ()),
        ("In which city did Super Bowl 50 take place?", "place", ()),
        ("Where are converted models kept?", "place", ()),
        ("When was Opening Night held?", "time", ()),
        ("In what year did Michael J. Shea graduate from Notre Dame?", "time", ()),
        ("On what day do Notre Dame home football games occur?", "time", ()),
        ("How many tokens do consecutive ones share?", "quantity", ()),
        ("How much memory does the fast model need?", "quantity", ()),
        ("What number of teams play in the league?", "quantity", ()),
        ("Which league did Notre Dame join in 1982?", "thing", ("leagu",)),
        ("What status code does uploading a document return?", "thing", ("status", "code")),
    ],
)
def test_the_question_says_what_kind_of_answer_it_asks_for(
        question: str, kind: str, nouns: tuple[str, ...]) -> None:
    assert answer_type(question) == AnswerType(kind, frozenset(nouns))  # type: ignore[arg-type]


@pytest.mark.parametrize("question", [
    "What is the default chunk size?", "How are streamed answers delivered?",
    "Why does the index rebuild?", "What happens to answers when Redis goes down?",
    "Ronald Reagan had a nickname, what was it?", "Explain the prompt budget.",
])
def test_other_questions_are_not_typed(question: str) -> None:
    assert answer_type(question) is None


@pytest.mark.parametrize(
    ("question", "sentence", "fitting"),
    [
        ("How many tokens do consecutive ones share?", "They share 40 tokens.", True),
        ("How many tokens do consecutive ones share?", "They share forty.", True),
        ("How many tokens do consecutive ones share?", "Consecutive ones share tokens.", False),
        ("Who headlined the halftime show?", "Coldplay headlined it.", False),  # opens it
        ("Who headlined the halftime show?", "It was headlined by Coldplay.", True),
        ("Who headlined the halftime show?", "Bruno Mars headlined it.", True),
        ("Who headlined the halftime show?", "A rock group headlined it.", False),
        # No NER: a capitalised adjective reads as a name.
        ("Who headlined the halftime show?", "A British rock group headlined it.", True),
        ("When was Opening Night held?", "It was held on February 1.", True),
        ("When was Opening Night held?", "It was held on a Monday.", True),
        ("When was Opening Night held?", "Opening Night was held at the SAP Center.", False),
        ("Where are converted models kept?", "They are kept in data/models.", True),
        ("Where are converted models kept?", "They are kept in the data directory.", False),
        ("Which language model writes answers?", "It is SmolLM2-135M-Instruct.", True),
        ("Which command measures latency?", "The rag bench command does.", True),
        ("Which command measures latency?", "The command measures latency.", False),
    ],
)
def test_an_answer_carries_a_span_of_the_kind_asked(question: str, sentence: str,
                                                    fitting: bool) -> None:
    asked = answer_type(question)
    assert asked is not None and fits(sentence, asked, question) is fitting


def test_a_claim_must_come_from_the_sentence_that_answers_the_question() -> None:
    """Every name and date occurs in the sources, but not in the sentence that answers."""
    question = "In which city was Super Bowl 50 played, and on what date?"
    pool, sources = _pool(GAME)
    wrong = "Super Bowl 50 was played in San Jose on February 1, 2016."
    right = "Super Bowl 50 was played in Santa Clara on February 7, 2016."
    old, _ = check_sentence(wrong, question, pool, sources, 0.5)
    assert old.supported  # what the old check passed
    new, best = check_answer_sentence(wrong, question, "", answer_type(question), pool,
                                      sources, 0.5)
    assert not new.supported and best is None and new.missing == ()
    new, best = check_answer_sentence(right, question, "", answer_type(question), pool,
                                      sources, 0.5)
    assert new.supported and best == 0


def test_who_headlined_is_not_the_guest_performers() -> None:
    question = "Who headlined the Super Bowl 50 halftime show?"
    pool, sources = _pool(SHOW)
    wrong = "The halftime show was headlined by Beyoncé and Bruno Mars."
    assert check_sentence(wrong, question, pool, sources, 0.5)[0].supported
    assert not check_answer_sentence(wrong, question, "", answer_type(question), pool,
                                     sources, 0.5)[0].supported
    right = "The halftime show was headlined by Coldplay."
    assert check_answer_sentence(right, question, "", answer_type(question), pool, sources,
                                 0.5)[0].supported


def test_a_follow_up_is_judged_against_what_it_refers_to() -> None:
    """After "What is the default chunk size?": its retrieval query carries "chunk size"."""
    question = "How many tokens do consecutive ones share?"
    search = f"{question} default chunk size 200 rag_chunk_size"
    pool, sources = _pool(CHUNKS, BUDGET)
    asked = answer_type(question)
    wrong = "The answer is 1681."
    assert check_sentence(wrong, question, pool, sources, 0.5)[0].supported
    assert not check_answer_sentence(wrong, question, search, asked, pool, sources,
                                     0.5)[0].supported
    right, best = check_answer_sentence("Consecutive chunks share 40 tokens.", question,
                                        search, asked, pool, sources, 0.5)
    assert right.supported and pool[best or 0].text == CHUNKS[1]


def test_a_claim_may_lean_on_the_sentence_next_to_the_one_that_matches() -> None:
    question = "When did Opening Night take place?"
    pool, sources = _pool(GAME)
    answer = "Opening Night took place at the SAP Center on February 1, 2016."
    check, best = check_answer_sentence(answer, question, "", answer_type(question), pool,
                                        sources, 0.5)
    assert check.supported and best == 1
    apart = [Candidate(c.text, c.source, c.document, 2 * (c.ordinal or 0)) for c in pool]
    assert not check_answer_sentence(answer, question, "", answer_type(question), apart,
                                     sources, 0.5)[0].supported


def test_an_answer_of_the_wrong_kind_is_unsupported() -> None:
    question = "How many tokens do consecutive chunks share?"
    pool, sources = _pool(CHUNKS)
    answer = "Consecutive windows share an overlap of tokens."
    assert check_sentence(answer, question, pool, sources, 0.5)[0].supported
    check, _ = check_answer_sentence(answer, question, "", answer_type(question), pool,
                                     sources, 0.5)
    assert not check.supported and check.overlap >= 0.5  # anchored, but no number


@pytest.mark.parametrize("answer", [
    "Super Bowl 50 was played in San Jose on February 1, 2016.",
    "Super Bowl 50 was played in Santa Clara on February 7, 2016.",
    "It was played in Paris.",
])
def test_the_old_check_setting_gives_the_old_verdicts(answer: str) -> None:
    question = "In which city was Super Bowl 50 played, and on what date?"
    pool, sources = _pool(GAME)
    old = Judge(question, pool, sources, 0.5, answers_question=False).verdict(answer)
    assert (old.check, old.best) == check_sentence(answer, question, pool, sources, 0.5)
    new = Judge(question, pool, sources, 0.5).verdict(answer)
    assert (new.check, new.best) == check_answer_sentence(
        answer, question, "", answer_type(question), pool, sources, 0.5)


def test_only_the_first_sentence_must_be_of_the_kind_asked() -> None:
    question = "Who headlined the Super Bowl 50 halftime show?"
    pool, sources = _pool(SHOW)
    judge = Judge(question, pool, sources, 0.5)
    assert judge.verdict("The halftime show was headlined by Coldplay.").passed
    # No name: it cannot be the answer, but it may add to one.
    more = "The Super Bowl 50 halftime show was headlined by a rock group."
    assert not judge.verdict(more).passed
    assert judge.verdict(more, " ").passed

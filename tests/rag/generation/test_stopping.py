"""Stop rules and the final clean-up of generated answers."""

from __future__ import annotations

import pytest

from rag.generation.stopping import AnswerStop, clean_answer, near_repeat, sentence_key, tail_repeat


def _feed(text: str, step: int = 3, paragraph: bool = True) -> tuple[str, str | None]:
    """Feed `text` to a fresh AnswerStop a few characters at a time, as a stream would."""
    rule = AnswerStop(paragraph)
    for end in range(step, len(text) + step, step):
        if rule.update(text[:end]):
            return text[:end], rule.reason
    return text, rule.reason


def test_a_whole_sentence_said_again_stops() -> None:
    looped = ("You can delete a document by uploading it to the server, and then deleting it. "
              * 10)
    seen, reason = _feed(looped)
    assert reason == "repeated sentence"
    assert len(seen) < 2 * len(looped) / 10 + 5  # stopped early in the second copy


def test_a_near_repeat_with_another_number_stops() -> None:
    text = ("The server is started in 104857600 bytes of cache. "
            "The server is started in 209715200 bytes of cache. ")
    assert _feed(text)[1] == "repeated sentence"


def test_different_sentences_go_on() -> None:
    text = "The default chunk size is 200 tokens. The overlap is 40 tokens. Both can be changed."
    assert _feed(text) == (text, None)


def test_counting_is_a_loop() -> None:
    assert _feed("[1] " + " ".join(f"[{n}]" for n in range(1, 60)))[1] == "repeated text"
    assert _feed("Prices: 200, 300 and 400 euros, or 500 with delivery.")[1] is None


def test_text_repeated_without_punctuation_stops() -> None:
    text = "the index holds vectors and the chunk store holds texts and " * 4
    assert _feed(text)[1] == "repeated text"
    assert not tail_repeat("a short tail a short tail")  # under 40 characters: allowed


def test_blank_line_ends_the_answer_unless_told_otherwise() -> None:
    text = "It answers 202 Accepted with a job id.\n\nIn addition, the server also says"
    assert _feed(text)[1] == "paragraph end"
    assert _feed(text, paragraph=False)[1] is None
    assert _feed("Answer:\n\nIt answers 202 Accepted.")[1] is None  # a label is no paragraph


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("It costs 3 euros.", "It costs 4 euros.", True),
        ("The cat sat on the mat.", "The dog sat on the mat.", True),
        ("The cat sat.", "The dog sat.", False),  # short: one word is a real difference
        ("It is red.", "It is red and blue.", False),
    ],
)
def test_near_repeat(a: str, b: str, same: bool) -> None:
    assert near_repeat(sentence_key(a), sentence_key(b)) is same


def test_clean_answer_keeps_the_first_paragraph_once_without_labels() -> None:
    raw = ("[2] guide.md: Uploads return 202. Uploads return 202. Status 415 means an unknown "
           "type.\n\nMore filler here and there.")
    assert clean_answer(raw) == "Uploads return 202. Status 415 means an unknown type."
    assert clean_answer("Answer: Paris is the capital.") == "Paris is the capital."
    assert clean_answer("A: 42 [1]") == "42 [1]"


def test_an_answer_cut_off_by_the_token_limit_loses_its_unfinished_sentence() -> None:
    text = "The answer is: John I. Jenkins, C.S.C. [2]. He leads the university and the"
    assert clean_answer(text, cut_off=True) == "John I. Jenkins, C.S.C. [2]."
    assert clean_answer("John Jenkins [2]", cut_off=True) == "John Jenkins [2]"  # nothing finished
    assert clean_answer(text) == "John I. Jenkins, C.S.C. [2]. He leads the university and the"

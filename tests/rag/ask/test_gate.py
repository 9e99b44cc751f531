"""The sentence gate: while an answer is generated, only sentences that passed the check leave,
each whole; joined, what leaves is the final answer's text, whatever the check settles."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence

import pytest

from rag.ask.check import CheckStage, UnsupportedAnswer
from rag.ask.context import AskContext
from rag.ask.gate import SentenceGate
from rag.ask.generate import GenerateStage
from rag.ask.pipeline import AskPipeline
from rag.generation.base import TokenCounts, TokenStream
from rag.types import Prompt
from tests.rag.ask.test_check import _context

COACH = "Gary Kubiak was the head coach of the Broncos."
SCORE = "The Broncos defeated the Carolina Panthers 24-10."
WRONG = "He was born in Paris in 1901."


def words(text: str) -> list[str]:
    """`text` in word-sized pieces, each with the space before it, as a model streams."""
    return re.findall(r"\s*\S+|\s+$", text)


class ScriptedGenerator:
    """A generator that streams a fixed text in the pieces given: a stand-in for the model;
    the check it is held to is the real one."""

    name = "scripted"
    context_window = 2048
    tokenizer = None

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)

    def load(self) -> None:
        """Nothing to load."""

    def stats(self) -> dict[str, float]:
        return {}

    def stream(self, prompt: Prompt, max_new_tokens: int,
               stop: threading.Event | None = None) -> TokenStream:
        counts = TokenCounts(prompt.prompt_tokens)

        def pieces() -> Iterator[str]:
            for piece in self.pieces[:max_new_tokens]:
                counts.completion_tokens += 1
                yield piece

        return TokenStream(pieces(), counts)  # type: ignore[arg-type]


def gate(policy: UnsupportedAnswer = "quote") -> SentenceGate:
    check = CheckStage(0.5, policy)
    return SentenceGate(check.judge(_context("")), policy)


def streamed(pieces: Sequence[str], policy: UnsupportedAnswer = "quote",
             max_new_tokens: int = 64) -> tuple[list[str], AskContext]:
    """The pieces an ask lets out while the model streams `pieces`, and its final context."""
    check = CheckStage(0.5, policy, min_quote_score=0.5)
    generate = GenerateStage(ScriptedGenerator(pieces), max_new_tokens, check=check)  # type: ignore[arg-type]
    run = AskPipeline([generate, check]).run(_context(""))
    out: list[str] = []
    while True:
        try:
            out.append(next(run))
        except StopIteration as end:
            return out, end.value


def test_a_sentence_leaves_whole_once_complete_and_only_if_it_passed() -> None:
    g = gate()
    text, released = "", []
    for piece in words(f"{COACH} {WRONG} {SCORE} The"):
        text += piece
        released.append((text, g.feed(text)))
    out = [(t, r) for t, r in released if r]
    # The first sentence leaves as one piece once the model has gone on past it.
    assert out[0] == (f"{COACH} He", COACH)
    assert all(not r for t, r in released if len(t) < len(COACH) + 3)
    # The rejected one never leaves; the one after it does, after the whitespace before it.
    assert out[1:] == [(f"{COACH} {WRONG} {SCORE} The", f" {SCORE}")]
    assert [v.passed for v in g.verdicts] == [True, False, True]
    assert g.released == f"{COACH} {SCORE}"


def test_drop_lets_nothing_out_before_the_end() -> None:
    g = gate("drop")
    text = ""
    for piece in words(f"{COACH} {SCORE} The"):
        text += piece
        assert g.feed(text) == ""
    assert [v.passed for v in g.verdicts] == [True, True]


def test_a_source_label_in_the_making_is_held() -> None:
    # "[1] ...:" at the start is a label the answer leaves out, colon and all.
    g = gate()
    text = ""
    for piece in words(f"[1] {COACH} He"):
        text += piece
        assert g.feed(text) == ""
    assert g.feed(text + " won: yes") == ""


ANSWERS = {
    "passes": f"{COACH} {SCORE}",
    "rejected": "The head coach of the Broncos is Joe Jackson. He lives in Paris.",
    "second rejected": f"{COACH} {WRONG}",
    "first rejected": f"{WRONG} {COACH}",
    "declined": "The documents do not contain this.",
    "declined later": f"{COACH} The documents do not mention his age.",
    "label": f"Answer: {COACH} [1]",
    "label swallows": f"[1] {COACH} Source: superbowl.txt",
    "lines": f"{COACH}\n{SCORE}\n- {WRONG}",
    "repeat": f"{COACH} {COACH} {SCORE}",
    "paragraph": f"{COACH} {SCORE}\n\nHe was born in Paris.",
    "cut off": f"{COACH}\n{SCORE} Gary Kubiak",
    "nothing": "",
}


@pytest.mark.parametrize("policy", ["quote", "flag", "drop"])
@pytest.mark.parametrize("split", ["words", "characters", "whole"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_what_streams_is_the_final_answer(answer: str, split: str,
                                          policy: UnsupportedAnswer) -> None:
    text = ANSWERS[answer]
    pieces = {"words": words(text), "characters": list(text), "whole": [text]}[split]
    limit = len(pieces) - 1 if answer == "cut off" else 64
    out, ctx = streamed(pieces, policy, limit)
    assert "".join(out) == ctx.text and ctx.text
    assert ctx.first_release is not None
    if policy == "quote":  # no sentence the check rejected while it streamed ever left
        rejected = [v.text for v in ctx.verdicts if v.check is not None and not v.passed]
        assert not [t for t in rejected if t in "".join(out)]


@pytest.mark.parametrize(("answer", "text", "mode"), [
    ("passes", f"{COACH} {SCORE}", "generated"),
    ("second rejected", COACH, "generated"),
    ("first rejected", COACH, "generated"),
    ("declined later", COACH, "generated"),
    ("lines", f"{COACH}\n{SCORE}", "generated"),
    ("rejected", '"Gary Kubiak was the head coach of the Broncos." [1]', "quote"),
    ("label swallows", '"Gary Kubiak was the head coach of the Broncos." [1]', "quote"),
    ("nothing", '"Gary Kubiak was the head coach of the Broncos." [1]', "quote"),
])
def test_quote_policy_answers(answer: str, text: str, mode: str) -> None:
    out, ctx = streamed(words(ANSWERS[answer]))
    assert (ctx.text, ctx.mode) == (text, mode)
    if mode == "generated":
        # Each sentence that passed left on its own, as soon as the model went on past it.
        assert out[0] == COACH

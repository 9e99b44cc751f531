"""When an answer is done: stop rules fed after every generated token, and the final clean-up.

Small models under greedy decoding fall into loops: a few tokens ("denied, denied, ..."), a whole
sentence, or a sentence again with one number changed. Nothing new follows a loop, so generation
ends at the first repeat. An answer also ends at its first blank line: the packaged 135M model
answers in one paragraph and what it adds after a blank line is filler.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# A sentence ends at . ! or ? (closing quotes or brackets included) before whitespace, or at a
# line break.
_SENTENCE = re.compile(r"[^\n]*?(?:[.!?]+[\"')\]]*(?=\s)|\n|$)")
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
# What a small model may put before its answer: "Answer:", "A:", or a source label it copied
# from the prompt ("[2] guide.md:").
_LABEL = re.compile(r"^(?:(?:(?:the )?answer(?: is)?|a)\s*:\s*|\[\d+\][^:\n]{0,80}:\s*)+",
                    re.IGNORECASE)
# The end of a finished sentence: . ! or ? (and closing quotes, brackets or citations).
_FINISHED = re.compile(r"[.!?][\"')\]]*(?:\s*\[\d+\])*(?=\s|$)")


def sentence_key(sentence: str) -> tuple[str, ...]:
    """The words of a sentence, case-folded, with every number the same (`#`)."""
    return tuple(_DIGITS.sub("#", w) for w in _WORD.findall(sentence.casefold()))


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` in order, stripped, empty ones left out."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def near_repeat(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Same sentence up to numbers, or up to one word when it has four or more."""
    if not a or len(a) != len(b):
        return False
    differences = sum(x != y for x, y in zip(a, b, strict=True))
    return differences == 0 or (differences == 1 and len(a) >= 4)


def periodic_tail(items: Sequence[object], times: int, min_items: int, max_span: int) -> bool:
    """The tail of `items` is a run of at most `max_span` items repeated back to back at least
    `times` times and over at least `min_items` items."""
    for span in range(1, max_span + 1):
        needed = span * max(times, -(-min_items // span))
        if len(items) < needed:
            continue
        tail = items[-needed:]
        if all(tail[i] == tail[i % span] for i in range(needed)):
            return True
    return False


def token_loop(generated: Sequence[int]) -> bool:
    """A run of at most 16 tokens said three times back to back, over 12 tokens or more (so a
    short legitimate repeat such as a table rule stays allowed)."""
    return periodic_tail(generated, times=3, min_items=12, max_span=16)


def paragraph_end(text: str) -> int | None:
    """Where the answer's first paragraph ends (a blank line after three words), else None.

    A label such as "Answer:" before a blank line is not a paragraph yet.
    """
    found = text.find("\n\n")
    while found != -1:
        if len(_WORD.findall(text, 0, found)) >= 3:
            return found
        found = text.find("\n\n", found + 2)
    return None


def tail_repeat(text: str, min_chars: int = 40) -> bool:
    """The text ends with a stretch of at least `min_chars` characters said twice in a row
    (a loop of any length, also one without sentence punctuation)."""
    text = " ".join(text.split())
    for length in range(min_chars, len(text) // 2 + 1):
        if text[-length:] == text[-2 * length : -length]:
            return True
    return False


def word_loop(text: str) -> bool:
    """A run of at most 8 words said four times back to back, over 12 words or more, numbers
    counted as the same (so counting "[1] [2] [3] ..." is a loop too)."""
    return periodic_tail(sentence_key(text), times=4, min_items=12, max_span=8)


class AnswerStop:
    """Per-answer stop decision on the text so far: `update` after each new piece says whether
    to stop now; `reason` says why."""

    def __init__(self, stop_at_paragraph: bool = True) -> None:
        self.stop_at_paragraph = stop_at_paragraph
        self.reason: str | None = None
        self._checked = 0  # sentences of the text already compared with the earlier ones
        self._keys: list[tuple[str, ...]] = []

    def update(self, text: str) -> bool:
        if self.stop_at_paragraph and paragraph_end(text) is not None:
            self.reason = "paragraph end"
        elif self._repeats(text):
            self.reason = "repeated sentence"
        elif tail_repeat(text) or word_loop(text):
            self.reason = "repeated text"
        return self.reason is not None

    def _repeats(self, text: str) -> bool:
        """Compare each newly completed sentence with every earlier one."""
        sentences = split_sentences(text)
        complete = sentences if text[-1:].isspace() else sentences[:-1]
        for sentence in complete[self._checked :]:
            key = sentence_key(sentence)
            if any(near_repeat(key, earlier) for earlier in self._keys):
                return True
            if key:
                self._keys.append(key)
        self._checked = len(complete)
        return False


def clean_answer(text: str, stop_at_paragraph: bool = True, cut_off: bool = False) -> str:
    """The answer as it is kept: its first paragraph, each sentence once (near-repeats too).

    `cut_off`: generation ran out of tokens, so an unfinished last sentence is left out (when
    a finished one comes before it).
    """
    if stop_at_paragraph:
        end = paragraph_end(text)
        text = text[:end] if end is not None else text
    text = _LABEL.sub("", text.lstrip())
    if cut_off:
        ends = [m.end() for m in _FINISHED.finditer(text)]
        text = text[: ends[-1]] if ends else text
    kept: list[str] = []
    keys: list[tuple[str, ...]] = []
    for match in _SENTENCE.finditer(text):
        sentence = match.group()
        key = sentence_key(sentence)
        if key and any(near_repeat(key, earlier) for earlier in keys):
            continue
        keys.append(key)
        kept.append(sentence)
    return "".join(kept).strip()

"""The sentence gate: what of an answer is let out while the model is still writing it.

Nothing unchecked is shown. The generated text is held until a sentence is complete; the check
(`ask.check.Judge`, the rule the final answer is settled by) then gives it its verdict, and
`shown_text` says what those verdicts let out: a sentence that passed, as one piece; a rejected
one never. What the model may still change is not complete yet: the last sentence, a source
label in the making at the start ("[1] guide.md:"), a line that a cut-off answer may lose.
Whatever the final answer adds (a quote when nothing passed, an abstention) the pipeline sends
after generation; joined, the pieces are the final answer's text.
"""

from __future__ import annotations

import re

from rag.ask.check import Judge, UnsupportedAnswer, shown_text
from rag.ask.claims import placed_sentences
from rag.generation.stopping import clean_answer
from rag.types import SentenceVerdict

# A sentence that ends with its own punctuation (closing quotes or brackets after it).
_FINISHED = re.compile(r"[.!?][\"')\]]*$")


class SentenceGate:
    """Per-answer gate: `feed` it the generated text after each new piece; it returns the text
    newly let out ("" while none is)."""

    def __init__(self, judge: Judge, unsupported: UnsupportedAnswer,
                 stop_at_paragraph: bool = True) -> None:
        self.judge = judge
        self.unsupported = unsupported
        self.stop_at_paragraph = stop_at_paragraph
        self.verdicts: list[SentenceVerdict] = []  # on the answer's first sentences, in order
        self.released = ""  # everything let out so far

    def feed(self, generated: str) -> str:
        """The text newly let out, given all the text generated so far."""
        complete = self.complete(generated)
        if len(complete) <= len(self.verdicts):
            return ""
        for sep, sentence in complete[len(self.verdicts) :]:
            self.verdicts.append(self.judge.verdict(sentence, sep))
        shown = shown_text(self.verdicts, self.unsupported, ended=False)
        new, self.released = shown[len(self.released) :], shown
        return new

    def complete(self, generated: str) -> list[tuple[str, str]]:
        """The sentences of the answer (as `clean_answer` keeps it) that no later text can
        change, each after the whitespace before it: up to the last one that ends with its
        punctuation and that more text follows (a cut-off answer keeps its finished sentences)."""
        placed = placed_sentences(clean_answer(generated, self.stop_at_paragraph))
        followed = generated[-1:].isspace()
        last = max((n for n, (_, sentence) in enumerate(placed)
                    if _FINISHED.search(sentence) and (followed or n < len(placed) - 1)),
                   default=-1)
        complete = placed[: last + 1]
        if len(complete) > len(self.verdicts):
            # A colon still to come would make the start a source label, which the answer
            # leaves out ("[1] The beekeeper is Miriam. Source:"): hold it until none can.
            probe = placed_sentences(clean_answer(generated + ":", self.stop_at_paragraph))
            if probe[: len(complete)] != complete:
                return complete[: len(self.verdicts)]
        return complete

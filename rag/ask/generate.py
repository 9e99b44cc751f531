"""Ask stage: generate the answer, stopping where the answer ends, and stream what of it the
check lets out: each sentence once it passed (`ask.gate`), never the model's raw text.

Generation stops at the first repeat (a sentence, a near-repeat of one, or any stretch of text
said twice in a row) and at the end of the answer's first paragraph; the text kept is the
cleaned answer (first paragraph, each sentence once). Token-level loops are caught inside the
local generator's scheduler too (`rag.generation.runtime.scheduler`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from rag.ask.check import CheckStage
from rag.ask.context import AskContext, Pieces
from rag.ask.gate import SentenceGate
from rag.generation.base import Generator
from rag.generation.stopping import AnswerStop, clean_answer

log = logging.getLogger(__name__)


class GenerateStage:
    """`check`: the stage whose verdicts let sentences out while they stream; without it
    nothing is streamed here (the pipeline sends the final answer whole)."""

    name = "generate"

    def __init__(self, generator: Generator, max_new_tokens: int,
                 stop_at_paragraph: bool = True, check: CheckStage | None = None) -> None:
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.stop_at_paragraph = stop_at_paragraph
        self.check = check

    def run(self, ctx: AskContext) -> Pieces:
        assert ctx.prompt is not None, "the prompt stage runs first"
        rule = AnswerStop(self.stop_at_paragraph)
        gate = None if self.check is None else SentenceGate(
            self.check.judge(ctx), self.check.unsupported, self.stop_at_paragraph)
        text = ""
        first: float | None = None
        limit = ctx.max_new_tokens or self.max_new_tokens
        stream = self.generator.stream(ctx.prompt, limit, ctx.stop)
        try:
            for piece in stream:
                first = first or time.perf_counter()
                text += piece
                released = gate.feed(text) if gate else ""
                if released:
                    yield released
                if rule.update(text):
                    log.debug("generation stopped: %s", rule.reason)
                    break
        finally:
            stream.close()  # stops the generator behind it
        tokens = stream.usage.completion_tokens
        cut_off = rule.reason is None and tokens >= limit
        return replace(ctx, generated=clean_answer(text, self.stop_at_paragraph, cut_off),
                       completion_tokens=tokens, verdicts=tuple(gate.verdicts if gate else ()),
                       first_token=first or time.perf_counter(), stop_reason=rule.reason)

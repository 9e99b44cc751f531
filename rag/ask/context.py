"""What the ask stages share: the `AskContext` they fill in order and the `Stage` protocol.

Each stage takes the `AskContext` so far and returns a new one; a stage that streams (the
generator) yields text pieces on the way: only text the check passed, never the model's raw
text (`ask.gate`). A stage that settles the answer early (no relevant
source: abstain) sets `done`, and the stages after it are skipped (`ask.pipeline` runs them).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from rag.types import (
    AnswerMode,
    Evidence,
    Prompt,
    Query,
    Quote,
    ScoredChunk,
    SentenceCheck,
    SentenceVerdict,
    ShortAnswer,
)

if TYPE_CHECKING:
    from rag.types import Turn

Pieces = Generator[str, None, "AskContext"]
S = TypeVar("S")


@dataclass(frozen=True)
class AskContext:
    """Everything one ask has found so far; stages fill it in order."""

    query: Query
    stop: threading.Event | None = None
    history: tuple[Turn, ...] = ()  # earlier turns of the conversation, oldest first
    max_new_tokens: int | None = None  # this ask's cap on the answer (None: the setting's)
    # follow-up rewrite
    search: str = ""  # the retrieval query when it is not the question itself
    # retrieve
    chunks: tuple[ScoredChunk, ...] = ()
    vector: npt.NDArray[np.float32] | None = None  # the retrieval query's embedding, (dim,)
    # select evidence
    evidence: Evidence | None = None
    # build prompt
    prompt: Prompt | None = None
    # generate
    generated: str = ""  # the generator's text, cleaned (first paragraph, no repeats)
    completion_tokens: int = 0
    first_token: float | None = None  # time.perf_counter() of the first piece
    stop_reason: str | None = None
    # the check's verdicts on the sentences let out while generating, in order
    verdicts: tuple[SentenceVerdict, ...] = ()
    # check
    text: str = ""  # the answer as given
    mode: AnswerMode = "generated"
    groundedness: float = 0.0
    sentences: tuple[SentenceCheck, ...] = ()
    quotes: tuple[Quote, ...] = ()
    # short answer
    short_answer: ShortAnswer | None = None
    # bookkeeping
    done: bool = False  # the answer is settled; later stages are skipped
    first_release: float | None = None  # time.perf_counter() the first text was let out
    timings: Mapping[str, float] = field(default_factory=dict)  # stage name -> ms

    @property
    def question(self) -> str:
        return self.query.text


class Stage(Protocol):
    """One step of the ask path."""

    name: str

    def run(self, ctx: AskContext) -> Pieces:
        """Return the context with this stage's findings; may yield answer text pieces."""
        ...


def quiet(run: Callable[[S, AskContext], AskContext]) -> Callable[[S, AskContext], Pieces]:
    """Make a stage's plain `run` (one that streams nothing) a `Stage.run`."""

    @functools.wraps(run)
    def wrapped(self: S, ctx: AskContext) -> Pieces:
        yield from ()
        return run(self, ctx)

    return wrapped


def settle(ctx: AskContext, text: str, mode: AnswerMode) -> AskContext:
    """The context with its answer settled: later stages are skipped."""
    return replace(ctx, text=text, mode=mode, done=True)

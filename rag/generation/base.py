"""The generation seam: the `Generator` protocol, the `TokenStream` every backend returns, the
token counts it carries, `generate` (a whole answer) and `build_generator` (the backend the
settings name).

The backends: `rag.generation.local` (a transformers model on this machine, the default) and
`rag.generation.openai` (an OpenAI-compatible server), each imported only when it is picked.
Where the weights come from (and the one-time GGUF conversion) is `rag.generation.model_files`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator as PieceGenerator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, assert_never

from rag.settings import Settings
from rag.types import Prompt, Usage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "GenerationResult",
    "Generator",
    "TokenCounts",
    "TokenStream",
    "build_generator",
    "generate",
]


@dataclass(frozen=True)
class GenerationResult:
    """A whole answer with its token counts and timings (seconds)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float
    total_s: float


@dataclass
class TokenCounts:
    """Token counts of one generation; mutable because the backend fills them in as it runs."""

    prompt_tokens: int
    completion_tokens: int = 0


class TokenStream(Iterator[str]):
    """Text pieces of one answer as they are generated; `usage` is exact once it is exhausted.

    Closing it (or dropping it) before the end stops the generation behind it.
    """

    def __init__(self, pieces: PieceGenerator[str, None, None], counts: TokenCounts) -> None:
        self._pieces = pieces
        self._counts = counts

    @classmethod
    def cancelled(cls, counts: TokenCounts) -> TokenStream:
        """The stream of an answer that was cancelled before it started: no pieces."""
        return cls(_no_pieces(), counts)

    def __next__(self) -> str:
        while True:
            piece = next(self._pieces)
            if piece:
                return piece

    @property
    def usage(self) -> Usage:
        return Usage(self._counts.prompt_tokens, self._counts.completion_tokens)

    def close(self) -> None:
        """Stop generating; the pieces not yet read are lost."""
        self._pieces.close()


def _no_pieces() -> PieceGenerator[str, None, None]:
    yield from ()


class Generator(Protocol):
    """Turns a prompt into answer text, piece by piece."""

    name: str

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's own tokenizer, with its chat template: prompts are counted with it."""
        ...

    @property
    def context_window(self) -> int:
        """Prompt plus answer tokens: the setting, capped by the model's own limit."""
        ...

    def load(self) -> None:
        """Load the model (or tokenizer and connection); call once before streaming."""
        ...

    def stats(self) -> dict[str, float]:
        """Scheduling figures for /metrics (queue depth, batch size, prefix-cache hits...)."""
        ...

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """Yield answer text as it is generated: greedy at temperature 0, ends at EOS,
        `max_new_tokens` or as soon as `stop` is set (e.g. the client went away)."""
        ...


def generate(
    generator: Generator, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
) -> GenerationResult:
    """Collect a whole answer from `generator.stream`, timing the first piece and the total."""
    started = time.perf_counter()
    first_token_s: float | None = None
    pieces: list[str] = []
    stream = generator.stream(prompt, max_new_tokens, stop)
    for piece in stream:
        if first_token_s is None:
            first_token_s = time.perf_counter() - started
        pieces.append(piece)
    total_s = time.perf_counter() - started
    usage = stream.usage
    return GenerationResult(
        text="".join(pieces),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        first_token_s=total_s if first_token_s is None else first_token_s,
        total_s=total_s,
    )


def build_generator(settings: Settings) -> Generator:
    """The generator that `settings.generator_backend` names (not loaded yet)."""
    match settings.generator_backend:
        case "local":
            from rag.generation.local import LocalGenerator  # torch and transformers

            return LocalGenerator(settings)
        case "openai":
            from rag.generation.openai import OpenAIGenerator  # needs httpx-sse

            return OpenAIGenerator(settings)
        case other:
            assert_never(other)

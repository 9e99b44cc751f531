"""Answer generation: a transformers model in this process (default) or an OpenAI-compatible server.

Where the weights come from (and the one-time GGUF conversion) is `rag.generation.model_files`; the
server backend is `rag.generation.openai`, imported only when `generator_backend` is `openai`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator as PieceGenerator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, assert_never

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase, TextIteratorStreamer

from rag.ask.prompt import Prompt
from rag.errors import ConfigError, InvalidInput, NotReady
from rag.generation.model_files import (
    MODEL_HINT,
    load_tokenizer,
    load_tokenizer_from,
    prepare_model,
    resolve_model,
)
from rag.generation.runtime.engine import Engine, EngineOptions, build_engine
from rag.generation.runtime.scheduler import Request
from rag.settings import Settings
from rag.types import Usage

__all__ = [
    "GenerationResult",
    "Generator",
    "LocalGenerator",
    "TokenStream",
    "build_generator",
    "generate",
    "load_tokenizer",
    "prepare_model",
    "resolve_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    """A whole answer with its token counts and timings (seconds)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float
    total_s: float


@dataclass
class _Counts:
    """Token counts of one generation; mutable because the producer fills them in as it runs."""

    prompt_tokens: int
    completion_tokens: int = 0


class TokenStream(Iterator[str]):
    """Text pieces of one answer as they are generated; `usage` is exact once it is exhausted.

    Closing it (or dropping it) before the end stops the generation behind it.
    """

    def __init__(self, pieces: PieceGenerator[str, None, None], counts: _Counts) -> None:
        self._pieces = pieces
        self._counts = counts

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
            return LocalGenerator(settings)
        case "openai":
            from rag.generation.openai import OpenAIGenerator  # needs httpx-sse

            return OpenAIGenerator(settings)
        case other:
            assert_never(other)


# --- local generation ----------------------------------------------------------------------


def _max_positions(config: Any, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model takes, if its config or tokenizer says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = tokenizer.model_max_length
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


class _CountingStreamer(TextIteratorStreamer):
    """Decoded text for the consumer thread, counting the generated token ids exactly."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, counts: _Counts) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self._counts = counts
        self._ended = False

    def put(self, value: torch.Tensor) -> None:
        # value: the new token ids, shape (tokens,)
        self._counts.completion_tokens += value.numel()
        super().put(value)  # type: ignore[no-untyped-call]

    def end(self) -> None:
        if not self._ended:  # once: a second end would leave a stray stop signal behind
            self._ended = True
            super().end()  # type: ignore[no-untyped-call]


class LocalGenerator:
    """A transformers causal LM on this machine, KV cache on, shared by every request through a
    step scheduler (`runtime.scheduler`): concurrent requests are decoded together, one batched
    forward per step, and prompts reuse the KV of cached prefixes
    (`runtime.kv_cache.PrefixCache`). The model runs in a process of its own unless
    `generator_in_process` (`runtime.process` says why)."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.generator_model
        self._settings = settings
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._engine: Engine | None = None
        self._context_window = settings.context_window
        self.model_dir: Path | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded()[1]

    @property
    def engine(self) -> Engine:
        """Where the model runs (`runtime.engine`): its `info` says on what device and dtype."""
        return self._loaded()[0]

    @property
    def context_window(self) -> int:
        self._loaded()
        return self._context_window

    def load(self) -> None:
        """Load (converting the packaged GGUF on first use) onto the configured device; once:
        a service handed a loaded generator shares it."""
        if self._engine is not None:
            return
        s = self._settings
        model_dir = prepare_model(s)
        tokenizer = load_tokenizer_from(model_dir)
        try:
            config = AutoConfig.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(
                f"Could not load the generator from {model_dir}: {error}", MODEL_HINT
            ) from error
        limit = _max_positions(config, tokenizer)
        engine = build_engine(EngineOptions.from_settings(s, model_dir), s.generator_in_process)
        engine.start()
        self._context_window = min(s.context_window, limit or 10**9)
        self._engine, self._tokenizer, self.model_dir = engine, tokenizer, model_dir
        logger.info("Generator %s loaded from %s: %s", self.name, model_dir,
                    ", ".join(f"{k} {v}" for k, v in engine.info.items()))

    def stats(self) -> dict[str, float]:
        return {} if self._engine is None else self._engine.figures()

    def clear_prefix_cache(self) -> None:
        """Forget every cached prompt prefix (benchmarks start cold with it)."""
        self.engine.clear_prefix_cache()

    def close(self) -> None:
        """Stop the engine; requests still running end where they are."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """Queue the prompt on the scheduler and stream its text as the steps produce it."""
        engine, tokenizer = self._loaded()
        self._check_room(prompt, max_new_tokens)
        counts = _Counts(prompt_tokens=len(prompt.input_ids))
        if stop is not None and stop.is_set():
            return TokenStream(_no_pieces(), counts)
        streamer = _CountingStreamer(tokenizer, counts)
        errors: list[Exception] = []

        def finish(error: Exception | None) -> None:
            if error is not None:
                errors.append(error)
            streamer.end()

        request = Request(
            ids=list(prompt.input_ids), max_new_tokens=max_new_tokens,
            emit=lambda token: streamer.put(torch.tensor([token])), finish=finish, stop=stop)
        engine.submit(request)
        return TokenStream(_local_pieces(streamer, request, errors), counts)

    def _loaded(self) -> tuple[Engine, PreTrainedTokenizerBase]:
        if self._engine is None or self._tokenizer is None:
            raise NotReady("The generator is not loaded yet.", "Call load() first.")
        return self._engine, self._tokenizer

    def _check_room(self, prompt: Prompt, max_new_tokens: int) -> None:
        """Refuse, before it joins the batch, a prompt that leaves no room for its answer."""
        needed = len(prompt.input_ids) + max_new_tokens
        if needed > self._context_window:
            raise InvalidInput(
                f"The prompt has {len(prompt.input_ids)} tokens and asks for up to "
                f"{max_new_tokens} more; the context window is {self._context_window}.",
                "Build the prompt with this generator's context_window and max_new_tokens.",
            )


def _no_pieces() -> PieceGenerator[str, None, None]:
    """An answer that was cancelled before it started."""
    yield from ()


def _local_pieces(
    streamer: _CountingStreamer, request: Request, errors: list[Exception]
) -> PieceGenerator[str, None, None]:
    """Text from the scheduler; a consumer that leaves early frees its slot at the next step."""
    try:
        yield from streamer
    finally:
        request.abandoned.set()
    if errors:
        raise errors[0]

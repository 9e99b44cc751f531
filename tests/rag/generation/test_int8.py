"""int8 weights (`rag.generation.runtime.int8`): the layer's arithmetic, the format's choice and
fallbacks, the saved copy (made once, mapped later, remade when stale or corrupt), and the
packaged model's answers in int8."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

import rag.generation.model_files as model_files
from rag.generation.local import LocalGenerator
from rag.generation.packaged import CODER_GENERATOR, FAST_GENERATOR
from rag.generation.runtime import int8
from rag.generation.runtime.engine import EngineOptions, cpu_format
from rag.generation.runtime.int8 import KERNEL_ROWS, Int8Linear, load_int8, quantize_linears
from rag.settings import Settings


@pytest.mark.parametrize(("rows", "width"), [
    (1, 96), (2, 96), (KERNEL_ROWS, 96), (KERNEL_ROWS + 1, 96), (200, 96),
    (1, 40), (200, 40)])  # 40 wide: no kernel (it takes multiples of 16 only)
def test_int8_layer_multiplies_like_its_dequantized_weight(rows: int, width: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(width, 40, bias=True)
    layer = Int8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.int8 and layer.scale.shape == (40,)
    # the weight it stands for: each row's int8 values times that row's scale
    dequantized = layer.weight.float() * layer.scale.float()[:, None]
    assert (dequantized - linear.weight).abs().max() <= linear.weight.abs().max() / 127
    x = torch.randn(rows, 3, width)  # float32 in: computed in bfloat16
    out = layer(x)
    assert out.shape == (rows, 3, 40) and out.dtype == torch.bfloat16
    expected = x @ dequantized.t() + linear.bias
    assert torch.allclose(out.float(), expected.detach(), atol=0.05, rtol=0.02)


def test_linear_layers_are_made_int8_but_those_kept() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4, bias=False)))
    assert quantize_linears(model) == 2
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model(torch.randn(2, 8)).shape == (2, 4)
    kept = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 4)))
    assert quantize_linears(kept, keep=("1.0",)) == 1
    assert type(kept[1][0]) is nn.Linear and isinstance(kept[0], Int8Linear)


def test_int8_where_the_cpu_has_native_bfloat16_else_float32_with_a_warning(
    caplog: pytest.LogCaptureFixture
) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # auto: the model's measured format (int8 for the 0.5B default, float32 for the 135M one),
    # float32 for others
    assert model_files.pick_weights(cpu, "auto", cpu_bf16=True, auto_format="int8") == "int8"
    assert model_files.pick_weights(cpu, "auto", cpu_bf16=True) == "float32"
    assert cpu_format(CODER_GENERATOR) == "int8" and cpu_format(FAST_GENERATOR) == "float32"
    assert cpu_format("some/model") == "float32"
    options = EngineOptions.from_settings(Settings(generator_model=CODER_GENERATOR), Path("m"))
    assert options.cpu_format == "int8"
    assert model_files.pick_weights(cpu, "auto", cpu_bf16=False) == "auto"
    assert model_files.pick_dtype(cpu, "auto", cpu_bf16=False) == torch.float32
    assert model_files.pick_weights(cpu, "float32", cpu_bf16=True) == "float32"
    assert model_files.pick_weights(cpu, "int8", cpu_bf16=True) == "int8"
    with caplog.at_level(logging.WARNING):
        assert model_files.pick_weights(cpu, "int8", cpu_bf16=False) == "float32"
        assert model_files.pick_weights(gpu, "int8", cpu_bf16=True) == "auto"
    warnings = [r.message for r in caplog.records if "int8 needs a CPU" in r.message]
    assert len(warnings) == 2 and "float32" in warnings[0]


@pytest.fixture()
def small_model(tmp_path: Path) -> Path:
    """A small Llama-architecture model (random weights) saved as a model directory."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    directory = tmp_path / "small"
    model.save_pretrained(directory)
    return directory


def _logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits.float()


def test_the_int8_copy_is_made_once_then_mapped(small_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    first = load_int8(small_model, models)
    copy = int8.int8_dir(models, small_model)
    saved = (copy / int8.WEIGHTS_FILE).stat().st_mtime_ns
    again = load_int8(small_model, models)
    assert (copy / int8.WEIGHTS_FILE).stat().st_mtime_ns == saved  # not made again
    assert torch.equal(_logits(first, ids), _logits(again, ids))
    # per block q, k, o, gate, up in int8 (v and down stay bfloat16), and the output layer
    assert sum(isinstance(m, Int8Linear) for m in again.modules()) == 2 * 5 + 1
    assert again.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert not any(t.is_meta for t in [*again.parameters(), *again.buffers()])
    # close to the float model it came from
    reference = _logits(AutoModelForCausalLM.from_pretrained(small_model), ids)
    assert (_logits(again, ids) - reference).abs().max() < 0.05 * reference.abs().max()


def test_a_stale_or_corrupt_int8_copy_is_made_again(
    small_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    load_int8(small_model, models)
    weights = int8.int8_dir(models, small_model) / int8.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])  # corrupt: cut short
    with caplog.at_level(logging.WARNING):
        remade = load_int8(small_model, models)
    assert [r for r in caplog.records if "cannot be read" in r.message]
    assert weights.stat().st_size > 100_000
    # other source weights (the model was replaced): the copy follows them
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_config(remade.config)
    other.save_pretrained(small_model)
    os.utime(small_model / "model.safetensors", ns=(1, 1))  # a different modification time
    updated = load_int8(small_model, models)
    assert not torch.allclose(_logits(remade, ids), _logits(updated, ids))
    reference = _logits(AutoModelForCausalLM.from_pretrained(small_model), ids)
    assert (_logits(updated, ids) - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.slow
def test_the_packaged_model_in_int8_starts_its_answer_as_in_float32(
    generator: LocalGenerator, plain_model: PreTrainedModel, models_dir: Path
) -> None:
    """SmolLM2 with int8 weights: the answer starts as in float32 (a few greedy tokens on,
    rounding may pick another of two close tokens)."""
    assert generator.model_dir is not None
    model = model_files.load_causal_lm(generator.model_dir, "cpu", "int8", models_dir=models_dir)
    tokenizer = generator.tokenizer
    ids = tokenizer("The capital of France is Paris. The capital of Italy is",
                    return_tensors="pt").input_ids
    with torch.inference_mode():
        kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        ours = model.generate(ids, **kwargs)[0, ids.shape[1]:]
        theirs = plain_model.generate(ids, **kwargs)[0, ids.shape[1]:]
    assert ours[:4].tolist() == theirs[:4].tolist()
    assert tokenizer.decode(ours[:4]).startswith(" Rome.")

"""Skinny linear layers: the same products as nn.Linear for any row count, switched on and off
in place, and only where they apply (float32 on a CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rag.generation.runtime.linear as linear
from rag.generation.runtime.linear import (
    SKINNY_ROWS,
    SkinnyLinear,
    use_skinny_linears,
    use_stock_linears,
)


def small_model(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 500, bias=False)).to(dtype)


@pytest.mark.parametrize("rows", [1, 2, 3, SKINNY_ROWS, SKINNY_ROWS + 1, 40])
def test_skinny_products_equal_the_stock_ones(rows: int) -> None:
    model = small_model()
    x = torch.randn(rows, 48)
    with torch.inference_mode():
        stock = model(x)
        assert use_skinny_linears(model, "on")
        assert all(type(m) is SkinnyLinear for m in (model[0], model[2]))
        skinny = model(x)
        batched = model(x.reshape(1, rows, 48))  # (batch, tokens, features) as in a model
    assert skinny.shape == stock.shape == (rows, 500)
    torch.testing.assert_close(skinny, stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[0], stock, rtol=1e-5, atol=1e-5)


def test_switching_back_restores_the_stock_layers() -> None:
    model = small_model()
    assert use_skinny_linears(model, "on")
    use_stock_linears(model)
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))
    assert not use_skinny_linears(model, "off")
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))


def test_auto_keeps_whichever_is_faster_and_other_dtypes_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for faster in (False, True):
        monkeypatch.setattr(linear, "_skinny_is_faster", lambda layer, faster=faster: faster)
        model = small_model()
        assert use_skinny_linears(model, "auto") is faster
        assert (type(model[2]) is SkinnyLinear) is faster
    half = small_model(torch.bfloat16)
    assert not use_skinny_linears(half, "on")  # measured for float32 only
    assert type(half[0]) is nn.Linear

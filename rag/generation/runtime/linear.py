"""Linear layers for decode-sized inputs on a CPU: a few rows times a large weight.

A decode step multiplies one row per request by every weight of the model. On the CPUs we run
on (AMD EPYC, MKL), `F.linear` routes one row to a matrix-vector product and two to seven rows
to a small-M matrix product, and both read the weights at a fraction of the memory bandwidth:
measured on SmolLM2-135M (fp32, 2 threads), the 49152x576 output layer took 10.2 ms for one row
and 22 ms for two, against 2.9 ms as `W @ xT` with two columns. So up to `SKINNY_ROWS` rows are
multiplied as `W @ xT` (one row is doubled: MKL's one-column product is the slow matrix-vector
path again), which gives the same greedy tokens (checked on the shipped suite) in about half
the time per step. Larger inputs (prefill) keep `F.linear`, which is as fast or faster there.

`use_skinny_linears` switches a loaded model over; with `auto` it first times both ways on the
model's largest linear layer and keeps the faster, so a CPU whose BLAS has no such slow path
keeps the stock layers.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

SKINNY_ROWS = 8


class SkinnyLinear(nn.Linear):
    """`nn.Linear` that multiplies up to `SKINNY_ROWS` rows as `W @ xT`: same weights, same
    results up to float rounding, faster where the BLAS handles few rows badly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > SKINNY_ROWS:
            return functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        if rows == 1:  # a single column would take the slow matrix-vector path
            flat = torch.cat([flat, flat])
        # (rows, out_features), made contiguous: a transposed view would send attention with a
        # padding mask to SDPA's math path (measured at 8 rows: 67 ms a step against 76)
        out = torch.mm(self.weight, flat.t())[:, :rows].t().contiguous()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_skinny_linears(model: nn.Module, choice: Literal["auto", "on", "off"] = "auto") -> bool:
    """Make `model`'s linear layers `SkinnyLinear` (in place; weights untouched) where `choice`
    says so: on, or auto where it is measured faster here. Only float32 on a CPU; returns
    whether the model now uses them."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if choice == "off" or not linears:
        return False
    largest = max(linears, key=lambda m: m.weight.numel())
    if largest.weight.device.type != "cpu" or largest.weight.dtype != torch.float32:
        return False
    if choice == "auto" and not _skinny_is_faster(largest):
        return False
    for module in linears:
        module.__class__ = SkinnyLinear
    return True


def use_stock_linears(model: nn.Module) -> None:
    """Undo `use_skinny_linears` (the benchmark's plain `model.generate` runs on stock layers)."""
    for module in model.modules():
        if type(module) is SkinnyLinear:
            module.__class__ = nn.Linear  # type: ignore[assignment]


def _skinny_is_faster(layer: nn.Linear, repeats: int = 5) -> bool:
    """Time one and two rows through `layer` both ways (median of `repeats`)."""
    with torch.inference_mode():
        inputs = [torch.randn(rows, layer.in_features) for rows in (1, 2)]
        stock = _median_s(lambda: [functional.linear(x, layer.weight) for x in inputs], repeats)
        skinny = _median_s(lambda: [SkinnyLinear.forward(layer, x)  # type: ignore[arg-type]
                                    for x in inputs], repeats)
    return skinny < stock


def _median_s(call: object, repeats: int) -> float:
    assert callable(call)
    call()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]

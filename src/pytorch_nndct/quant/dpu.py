"""Ops the DPU computes differently from float PyTorch, simulated when the model is quantized (SPEC 2.4).

Each function has the signature of the float function in `pytorch_nndct.nn.FUNCTIONS` it replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..ir.ops import Op
from ..nn.functional import FUNCTIONS
from .primitives import avgpool_factor, fake_quantize
from .spec import QuantSpec, RoundMode

__all__ = ["DPU_FUNCTIONS", "DPU_LEAKY_SLOPE", "HSIGMOID_M", "HSIGMOID_S"]

DPU_LEAKY_SLOPE = 26 / 256
HSIGMOID_M, HSIGMOID_S = 2731, 14  # hard-sigmoid(x) = relu6(x + 3) * 2731 / 2^14 (about 1/6)
_HSIG_SPEC = QuantSpec(8, True, RoundMode.HALF_UP, 7)


def _as_pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _avg_pool2d(
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> torch.Tensor:
    kh, kw = _as_pair(kernel_size)
    if divisor_override is not None or (not count_include_pad and any(_as_pair(padding))):
        return FUNCTIONS["avg_pool2d"](
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
    m, s = avgpool_factor(kh * kw)
    window_sum = F.avg_pool2d(input, (kh, kw), stride, padding, ceil_mode, True, divisor_override=1)
    return window_sum * (m / 2**s)


def _adaptive_avg_pool2d(input: torch.Tensor, output_size: Any) -> torch.Tensor:
    oh, ow = _as_pair(output_size)
    h, w = (int(d) for d in input.shape[-2:])  # plain ints (a TorchScript trace records the size it saw)
    if oh is None or ow is None or h % oh or w % ow:
        return F.adaptive_avg_pool2d(input, output_size)
    if (oh, ow) == (1, 1):  # global pooling: a plain sum, exact on the fix-point grid like avg_pool2d's
        m, s = avgpool_factor(h * w)
        return input.sum(dim=(-2, -1), keepdim=True) * (m / 2**s)
    k = (h // oh, w // ow)
    return _avg_pool2d(input, k, k)


def _leaky_relu(input: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(input, DPU_LEAKY_SLOPE)


def _hardsigmoid(input: torch.Tensor) -> torch.Tensor:
    return F.relu6(input + 3.0) * (HSIGMOID_M / 2**HSIGMOID_S)


def _hardswish(input: torch.Tensor) -> torch.Tensor:
    return input * fake_quantize(_hardsigmoid(input), _HSIG_SPEC)


DPU_FUNCTIONS: dict[Op, Callable[..., Any]] = {
    Op.AVG_POOL2D: _avg_pool2d,
    Op.ADAPTIVE_AVG_POOL2D: _adaptive_avg_pool2d,
    Op.LEAKY_RELU: _leaky_relu,
    Op.HARDSIGMOID: _hardsigmoid,
    Op.HARDSWISH: _hardswish,
}

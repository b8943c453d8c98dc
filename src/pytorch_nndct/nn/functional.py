"""The functions behind `nndct_nn.Module('<op>')`: one plain torch call per op of the IR vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FUNCTIONS", "resolve_aten"]

Tensor = torch.Tensor


def _identity(input: Tensor) -> Tensor:
    return input


def _squeeze(input: Tensor, dim: Any = None) -> Tensor:
    if dim is None:
        return input.squeeze()
    return input.squeeze(tuple(dim) if isinstance(dim, list) else dim)


def _interpolate(
    input: Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: Any = None,
) -> Tensor:
    if mode == "nearest":
        return torch.ops.aten.upsample_nearest2d.vec(input, size, scale_factor)
    return torch.ops.aten.upsample_bilinear2d.vec(input, size, bool(align_corners), scale_factor)


def _slice(input: Tensor, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Tensor:
    return torch.ops.aten.slice.Tensor(input, dim, start, end, step)


def _pad(input: Tensor, pad: list[int], mode: str = "constant", value: Any = None) -> Tensor:
    return torch.ops.aten.pad.default(input, pad, mode, value)


def _avg_pool2d(
    input: Tensor,
    kernel_size: Any,
    stride: Any,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> Tensor:
    return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardtanh": lambda input, min_val=-1.0, max_val=1.0: F.hardtanh(input, min_val, max_val),
    "leaky_relu": lambda input, negative_slope=0.01: F.leaky_relu(input, negative_slope),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": lambda input, approximate="none": F.gelu(input, approximate=approximate),
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "softmax": lambda input, dim: torch.softmax(input, dim),
    "add": lambda input, other, alpha=1: torch.add(input, other, alpha=alpha),
    "sub": lambda input, other, alpha=1: torch.sub(input, other, alpha=alpha),
    "mul": torch.mul,
    "div": lambda input, other, rounding_mode=None: torch.div(input, other, rounding_mode=rounding_mode),
    "matmul": torch.matmul,
    "mean": lambda input, dim=None, keepdim=False: torch.mean(input, dim=dim, keepdim=keepdim),
    "max_pool2d": lambda input, kernel_size, stride, padding=0, dilation=1, ceil_mode=False: F.max_pool2d(
        input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode
    ),
    "avg_pool2d": _avg_pool2d,
    "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "interpolate": _interpolate,
    "pad": _pad,
    "cat": lambda tensors, dim=0: torch.cat(tensors, dim),
    "flatten": lambda input, start_dim=0, end_dim=-1: torch.flatten(input, start_dim, end_dim),
    "reshape": lambda input, shape: torch.reshape(input, shape),
    "permute": lambda input, dims: torch.permute(input, dims),
    "transpose": lambda input, dim0, dim1: torch.transpose(input, dim0, dim1),
    "contiguous": lambda input: input.contiguous(),
    "unsqueeze": lambda input, dim: torch.unsqueeze(input, dim),
    "squeeze": _squeeze,
    "slice": _slice,
    "select": lambda input, dim, index: torch.select(input, dim, index),
    "chunk": lambda input, chunks, dim=0: torch.chunk(input, chunks, dim),
    "split": lambda input, split_size, dim=0: torch.split(input, split_size, dim),
    "expand": lambda input, size: input.expand(size),
    "pixel_shuffle": lambda input, upscale_factor: F.pixel_shuffle(input, upscale_factor),
    "dropout": _identity,
    "identity": _identity,
}


def resolve_aten(target: str) -> Any:
    """`'aten.roll.default'` -> `torch.ops.aten.roll.default`, with a clear error if it does not exist."""
    parts = target.split(".")
    if len(parts) != 3:
        raise ValueError(f"{target!r} is not a qualified ATen operator name like 'aten.roll.default'")
    ns, name, overload = parts
    try:
        return getattr(getattr(getattr(torch.ops, ns), name), overload)
    except (AttributeError, RuntimeError) as exc:
        raise ValueError(
            f"operator {target!r} does not exist in torch {torch.__version__}; the generated model needs the "
            "torch version it was generated with, or a newer one"
        ) from exc

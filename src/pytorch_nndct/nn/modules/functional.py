"""Tensor operations as modules, for models written for the original's quantization-aware training
(`from pytorch_nndct.nn.modules import functional`, VAIQ35 4.2).

Why modules: the original's QAT attaches a quantizer to each quantized op through module hooks, so a `+`,
`torch.cat` or `F.pad` in a model's forward has to become a submodule (`self.add = functional.Add()`) that
owns that op's quantizer. Models written that way must import and run unchanged here. Each forward is one
plain torch call, so our tracer (torch.export) sees straight through the module to the ordinary ATen op, and
post-training quantization treats these models like any other.

Differences from the original, on purpose:
- `Sub` works (`torch.sub(input, other, alpha=alpha)`, alpha 1 by default); the original's body used
  undefined names and could not run.
- `out=` is accepted (default None) for signature compatibility but an actual `out` tensor is refused: a
  module whose result is written into a caller's tensor instead of returned would bypass the output hook
  that quantizes it.
- `Upsample` calls `F.interpolate`, which is what the deprecated `F.upsample` forwards to anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "Add",
    "AddScalar",
    "Cat",
    "Clamp",
    "Const",
    "Functional",
    "Interpolate",
    "Matmul",
    "Max",
    "Mean",
    "Mul",
    "Pad",
    "Softmax",
    "Sqrt",
    "Sub",
    "Sum",
    "Transpose",
    "Upsample",
]

log = logging.getLogger("pytorch_nndct")

Tensor = torch.Tensor
Number = int | float | bool


def _no_out(op: str, out: Any) -> None:
    if out is not None:
        raise ValueError(
            f"functional.{op}: out= is not supported; use the returned tensor (the op's quantizer sees only "
            "what the module returns)."
        )


class Functional(torch.nn.Module):
    """Base of the op modules: a stateless module whose forward is one torch call (the original's "state
    collector": it gives the op a place in the module tree for its quantizer)."""


class Add(Functional):
    def forward(self, input: Tensor, other: Tensor | Number, alpha: Number = 1, out: None = None) -> Tensor:
        _no_out("Add", out)
        return torch.add(input, other, alpha=alpha)


class Sub(Functional):
    def forward(self, input: Tensor, other: Tensor | Number, alpha: Number = 1, out: None = None) -> Tensor:
        _no_out("Sub", out)
        return torch.sub(input, other, alpha=alpha)


class AddScalar(Functional):
    """input + a Python number (taken as a float, as the original does)."""

    def forward(self, input: Tensor, other: Number) -> Tensor:
        return torch.add(input, float(other))


class Cat(Functional):
    def forward(self, tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
        return torch.cat(list(tensors), dim)


class Mul(Functional):
    def forward(self, input: Tensor, other: Tensor | Number) -> Tensor:
        return torch.mul(input, other)


class Matmul(Functional):
    def forward(self, input: Tensor, other: Tensor, out: None = None) -> Tensor:
        _no_out("Matmul", out)
        return torch.matmul(input, other)


class Max(Functional):
    """(values, indices) along `dim`, as `torch.max(input, dim, keepdim)` returns them (the original's QAT
    quantizes `values` only)."""

    def forward(self, input: Tensor, dim: int, keepdim: bool = False, out: None = None) -> Any:
        _no_out("Max", out)
        return torch.max(input, dim, keepdim)


class Sum(Functional):
    def forward(
        self, input: Tensor, dim: int | Sequence[int], keepdim: bool = False, dtype: torch.dtype | None = None
    ) -> Tensor:
        return torch.sum(input, dim, keepdim, dtype=dtype)


class Interpolate(Functional):
    def forward(
        self,
        input: Tensor,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> Tensor:
        return F.interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor)


class Upsample(Functional):
    def forward(
        self,
        input: Tensor,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
    ) -> Tensor:
        return F.interpolate(input, size, scale_factor, mode, align_corners)


_warned_pad_modes: set[str] = set()


class Pad(Functional):
    """`F.pad`. Warns once per mode (through the "pytorch_nndct" logger) unless the mode is 'replicate', as the
    original does: its QAT flow tells the user that the DPU supports only replicate padding here. We keep the
    warning because a QAT model is trained to be deployed, and a padding mode the target cannot run on the
    DPU would be found only after training. (Our own xmodel export lowers constant, reflect and 1-wide
    replicate padding to XIR `pad`; where that op runs depends on the target, which the Inspector reports.)"""

    def forward(self, input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = 0) -> Tensor:
        if mode != "replicate" and mode not in _warned_pad_modes:
            _warned_pad_modes.add(mode)
            log.warning(
                "functional.Pad with mode %r: the original tool supports only 'replicate' padding on the DPU "
                "for this module; check the deployment target (Inspector) before training with it.",
                mode,
            )
        return F.pad(input, list(pad), mode, value)


class Mean(Functional):
    def forward(self, input: Tensor, dim: int | Sequence[int], keepdim: bool = False, out: None = None) -> Tensor:
        _no_out("Mean", out)
        return torch.mean(input, dim, keepdim)


class Softmax(Functional):
    def forward(self, input: Tensor, dim: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
        return F.softmax(input, dim, dtype=dtype)


class Clamp(Functional):
    def forward(self, input: Tensor, min: Tensor | Number | None = None, max: Tensor | Number | None = None) -> Tensor:
        return torch.clamp(input, min, max)


class Const(Functional):
    """A constant tensor held as a buffer (moves with `.to()`, saved in the state dict); `forward()` returns it."""

    value: Tensor

    def __init__(self, value: Tensor | Number | Sequence[Number]) -> None:
        super().__init__()
        self.register_buffer("value", torch.as_tensor(value).detach().clone())

    def forward(self) -> Tensor:
        return self.value


class Transpose(Functional):
    def forward(self, input: Tensor, dim0: int, dim1: int) -> Tensor:
        return torch.transpose(input, dim0, dim1)


class Sqrt(Functional):
    def forward(self, input: Tensor, out: None = None) -> Tensor:
        _no_out("Sqrt", out)
        return torch.sqrt(input)

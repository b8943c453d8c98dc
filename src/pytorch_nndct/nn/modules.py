"""The modules generated code builds: one per op, so later stages can attach quantization to each."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .functional import FUNCTIONS, resolve_aten

__all__ = [
    "Aten",
    "BatchNorm",
    "ChannelScale",
    "Const",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "GroupNorm",
    "Input",
    "LayerNorm",
    "Linear",
    "Module",
]


class Input(torch.nn.Module):
    """A network input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input


class Const(torch.nn.Module):
    """A tensor the model holds outside conv/linear/norm layers (a class token, a position table)."""

    def __init__(self, shape: list[int], dtype: str = "float32") -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(shape, dtype=getattr(torch, dtype)))

    def forward(self) -> torch.Tensor:
        return self.value


class Conv1d(torch.nn.Conv1d):
    pass


class Conv2d(torch.nn.Conv2d):
    pass


class Conv3d(torch.nn.Conv3d):
    pass


class ConvTranspose1d(torch.nn.ConvTranspose1d):
    pass


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    pass


class ConvTranspose3d(torch.nn.ConvTranspose3d):
    pass


class Linear(torch.nn.Linear):
    pass


class LayerNorm(torch.nn.LayerNorm):
    pass


class GroupNorm(torch.nn.GroupNorm):
    pass


class BatchNorm(torch.nn.Module):
    """Inference-only batch-norm over dimension 1 (any rank), as left when passes are not run."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features))
            self.bias = torch.nn.Parameter(torch.zeros(num_features))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ChannelScale(torch.nn.Module):
    """`x * weight + bias` per channel along `dim`: a batch-norm that could not be folded."""

    def __init__(self, num_features: int, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        shape = [1] * input.dim()
        shape[self.dim] = -1
        return input * self.weight.view(shape) + self.bias.view(shape)


class Module(torch.nn.Module):
    """A parameter-free op, called by name: `Module('relu')(x)`."""

    def __init__(self, op: str) -> None:
        super().__init__()
        if op not in FUNCTIONS:
            raise ValueError(f"unknown op {op!r}; known: {', '.join(sorted(FUNCTIONS))}")
        self.op = op
        self._fn = FUNCTIONS[op]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return repr(self.op)


class Aten(torch.nn.Module):
    """An op with no quantized equivalent: runs the original ATen operator in float."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self._fn = resolve_aten(target)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return repr(self.target)

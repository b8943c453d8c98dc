"""The modules generated code builds: one per op, so later stages can attach quantization to each.

The package also holds what models written for the original's quantization-aware training import:
`functional` (ops as modules, `from pytorch_nndct.nn.modules import functional`) and `QuantStub` /
`DeQuantStub` (also exported from `pytorch_nndct.nn`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..functional import FUNCTIONS, resolve_aten
from . import functional  # noqa: F401  (pytorch_nndct.nn.modules.functional, not in __all__)
from .quant_stubs import DeQuantStub, QuantStub

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
    "DeQuantStub",
    "Embedding",
    "GroupNorm",
    "Input",
    "LayerNorm",
    "Linear",
    "Module",
    "QuantHooks",
    "QuantStub",
]


class QuantHooks:
    """Hooks a quantizer may set on any generated submodule (pytorch_nndct.quant.runtime.attach).

    `nndct_out(value)` is applied to the submodule's output, `nndct_param(name, tensor)` to each parameter
    it uses; on conv/linear layers, `nndct_seen(value)` sees the raw output first (bias correction). Unset,
    the submodule computes in float.
    """

    nndct_out: Any = None
    nndct_param: Any = None
    nndct_seen: Any = None
    nndct_int: Any = None  # conv/linear with float-scale weights: () -> (integer weights, scales, bias / scales)

    def _out(self, value: Any) -> Any:
        return value if self.nndct_out is None else self.nndct_out(value)

    def _integer(self) -> Any:
        return None if self.nndct_int is None else self.nndct_int()

    def _seen(self, value: Any) -> Any:
        return value if self.nndct_seen is None else self.nndct_seen(value)

    def _p(self, name: str, tensor: Any) -> Any:
        return tensor if self.nndct_param is None else self.nndct_param(name, tensor)


class Input(QuantHooks, torch.nn.Module):
    """A network input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._out(input)


class Const(QuantHooks, torch.nn.Module):
    """A tensor the model holds outside conv/linear/norm layers (a class token, a position table)."""

    def __init__(self, shape: list[int], dtype: str = "float32") -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(shape, dtype=getattr(torch, dtype)))

    def forward(self) -> torch.Tensor:
        return self._out(self._p("value", self.value))


class _ConvHooks(QuantHooks):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, b = self._p("weight", self.weight), self._p("bias", self.bias)
        view = self._integer()
        if view is None:
            y = self._conv_forward(input, w, b)
        else:
            q, s, b_s = view
            y = self._conv_forward(input, q, b_s) * s.view(1, -1, *([1] * (input.dim() - 2)))
        return self._out(self._seen(y))


class Conv1d(_ConvHooks, torch.nn.Conv1d):
    pass


class Conv2d(_ConvHooks, torch.nn.Conv2d):
    pass


class Conv3d(_ConvHooks, torch.nn.Conv3d):
    pass


class _ConvTransposeHooks(QuantHooks):
    _functional: Any = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, b = self._p("weight", self.weight), self._p("bias", self.bias)
        out = type(self)._functional(
            input, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )
        return self._out(self._seen(out))


class ConvTranspose1d(_ConvTransposeHooks, torch.nn.ConvTranspose1d):
    _functional = staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_ConvTransposeHooks, torch.nn.ConvTranspose2d):
    _functional = staticmethod(F.conv_transpose2d)


class ConvTranspose3d(_ConvTransposeHooks, torch.nn.ConvTranspose3d):
    _functional = staticmethod(F.conv_transpose3d)


class Linear(QuantHooks, torch.nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, b = self._p("weight", self.weight), self._p("bias", self.bias)
        view = self._integer()
        if view is None:
            return self._out(self._seen(F.linear(input, w, b)))
        q, s, b_s = view
        return self._out(self._seen(F.linear(input, q, b_s) * s))


class Embedding(QuantHooks, torch.nn.Module):
    """A lookup table: its rows are the (quantized) weight's."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int = -1) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.padding_idx = padding_idx

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self._out(
            F.embedding(indices, self._p("weight", self.weight), None if self.padding_idx < 0 else self.padding_idx)
        )


class LayerNorm(QuantHooks, torch.nn.LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._out(super().forward(input))


class GroupNorm(QuantHooks, torch.nn.GroupNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._out(super().forward(input))


class BatchNorm(QuantHooks, torch.nn.Module):
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
        w, b = self._p("weight", self.weight), self._p("bias", self.bias)
        return self._out(F.batch_norm(input, self.running_mean, self.running_var, w, b, False, 0.0, self.eps))


class ChannelScale(QuantHooks, torch.nn.Module):
    """`x * weight + bias` per channel along `dim`: a batch-norm that could not be folded."""

    def __init__(self, num_features: int, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        shape = [1] * input.dim()
        shape[self.dim] = -1
        w, b = self._p("weight", self.weight), self._p("bias", self.bias)
        return self._out(input * w.view(shape) + b.view(shape))


class Module(QuantHooks, torch.nn.Module):
    """A parameter-free op, called by name: `Module('relu')(x)`."""

    def __init__(self, op: str) -> None:
        super().__init__()
        if op not in FUNCTIONS:
            raise ValueError(f"unknown op {op!r}; known: {', '.join(sorted(FUNCTIONS))}")
        self.op = op
        self._fn = FUNCTIONS[op]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._out(self._fn(*args, **kwargs))

    def extra_repr(self) -> str:
        return repr(self.op)


class Aten(QuantHooks, torch.nn.Module):
    """An op with no quantized equivalent: runs the original ATen operator in float."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self._fn = resolve_aten(target)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._out(self._fn(*args, **kwargs))

    def extra_repr(self) -> str:
        return repr(self.target)

"""`QuantStub` / `DeQuantStub`: the markers the original's QAT models put where the quantized region starts
and ends (VAIQ35 4.2, 4.4), so that such models import and run here unchanged.

Both are the identity. The original used them to find the network inputs it should quantize; our tracer
finds inputs and quantization points from the graph itself, so the stubs carry no behaviour: they return
their argument, recursing into lists and tuples (the same container type back, named tuples included) so
that a stub around a multi-tensor input or output keeps its structure. Returning the very same tensors adds
no node to the traced graph.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DeQuantStub", "QuantStub"]


def _identity(value: Any) -> Any:
    if isinstance(value, list | tuple):
        items = [_identity(v) for v in value]
        if hasattr(value, "_fields"):  # a named tuple takes its fields positionally
            return type(value)(*items)
        return type(value)(items)
    return value


class QuantStub(torch.nn.Module):
    """Marks where the quantized part of a network begins; the identity on its input."""

    def forward(self, input: Any) -> Any:
        return _identity(input)


class DeQuantStub(torch.nn.Module):
    """Marks where the quantized part of a network ends; the identity on its input."""

    def forward(self, input: Any) -> Any:
        return _identity(input)

"""Attention masks and other large constants: which tensors must stay off the 8-bit grids (SPEC 2.7).

A mask such as `(1 - attention_mask) * finfo(float32).min`, `where(mask, scores, -inf)` or a float buffer of
`-inf` carries values no 8-bit grid can hold: quantizing it, or the scores it was added to, destroys the
range the point is calibrated on. The original quantizer has no rule for them; ours:

- a *large* tensor holds such values without depending on the model's float data: a constant whose values
  reach `LARGE_VALUE` (or are not finite), or a value computed from masks, sizes and constants with a scalar
  that large (`* finfo.min`, `- 1e9`, `full(-inf)`), and whatever is computed from large tensors alone
  (reshape, expand, where);
- a *masked* tensor is the model's data combined with a large one (`scores + mask`, `where(mask, scores,
  -inf)`, `masked_fill`): it holds the large values in its masked positions.

Both are computed in float and get no quantization point; the op after a masked tensor (softmax) reads it in
float and quantizes its own output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.graph import Graph, Node, TensorMeta, leaves
from ..ir.ops import Op

__all__ = ["LARGE_VALUE", "OffGrid", "off_grid"]

LARGE_VALUE = 1e4  # no 8-bit activation of a trained network gets near it; masks use -1e4 .. -inf

_FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})
_STRUCTURE = frozenset({Op.SIZE, Op.SCALAR})  # sizes: neither data nor masks


@dataclass
class OffGrid:
    """Nodes whose outputs stay float, with the reason the plan reports."""

    large: dict[str, str] = field(default_factory=dict)
    masked: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.large or name in self.masked

    def reason(self, name: str) -> str | None:
        return self.large.get(name) or self.masked.get(name)


def _scalars(value: Any) -> Iterator[float]:
    """The numbers (not bools) in a nested attribute value."""
    return (float(v) for v in leaves(value) if isinstance(v, int | float) and not isinstance(v, bool))


def _has_large_scalar(node: Node) -> bool:
    if node.op is Op.ATEN:
        values = [*_scalars(node.attrs.get("args", [])), *_scalars(node.attrs.get("kwargs", {}))]
    elif node.op in (Op.ADD, Op.SUB, Op.MUL, Op.DIV):
        values = list(_scalars(node.attrs.get("other")))
    else:
        return False
    return any(not math.isfinite(v) or abs(v) >= LARGE_VALUE for v in values)


def _is_large_tensor(t: torch.Tensor) -> bool:
    if not t.is_floating_point() or t.numel() == 0:
        return False
    return bool((~torch.isfinite(t)).any()) or float(t.abs().amax()) >= LARGE_VALUE


def off_grid(graph: Graph) -> OffGrid:
    """Find the large and the masked tensors of `graph` (see the module docstring)."""
    out = OffGrid()
    data: set[str] = set()  # nodes whose value depends on the model's float data or parameters
    for node in graph.nodes:
        if node.op in _STRUCTURE:
            continue
        is_float = isinstance(node.meta, TensorMeta) and node.meta.dtype in _FLOAT_DTYPES
        if node.op is Op.CONST:
            value = graph.params[node.params["value"]]
            if _is_large_tensor(value):
                out.large[node.name] = "a constant with values beyond any 8-bit grid (a mask); kept in float"
            elif value.is_floating_point():
                data.add(node.name)
            continue
        if node.op is Op.INPUT or node.params:
            if is_float or node.params:
                data.add(node.name)
            continue
        tensor_inputs = [i for i in node.inputs if i.op not in _STRUCTURE]
        has_data = any(i.name in data for i in tensor_inputs)
        has_large = any(i.name in out.large for i in tensor_inputs) or _has_large_scalar(node)
        if has_data and has_large:
            data.add(node.name)
            if is_float:
                out.masked[node.name] = (
                    "applies a mask with values beyond any 8-bit grid; computed in float, the next op reads it in float"
                )
        elif has_data:
            data.add(node.name)
        elif has_large and is_float:
            out.large[node.name] = "a mask with values beyond any 8-bit grid; kept in float"
        elif has_large and any(i.name in out.large for i in tensor_inputs):
            out.large[node.name] = "derived from a mask; kept in float"
    return out

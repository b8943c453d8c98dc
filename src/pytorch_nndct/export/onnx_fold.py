"""Constant subgraphs of the ONNX export, computed in torch at export time and written as initializers.

A node folds when nothing it reads depends on a network input and every value it reads is exact (not on a
quantization point): swin's shifted-window masks (new_zeros, slices filled in place, masked_fill), position
ids from constant buffers, index tables. It is evaluated as the generated module computes it (the same
runtime functions, ATen operators called by name, views and in-place writes included) and written once a
node that does not fold reads it, or it is an output; a point on its own output is written after it as
usual. Quantized parameters, the DPU's own arithmetic (average pooling, hard-sigmoid, ...) and random ops
never fold: they are lowered like any other node. Parameters fold with the values the simulation uses
(fake-quantized where they have a point), and a parameter that a lowered node reads is written as usual
(int8 and DequantizeLinear). Tensor-creation ops that read only the data type of their tensor argument
(`x.new_zeros(size)`, `zeros_like` of a tensor of known shape) fold as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ir.aten_map import TorchConst
from ..ir.graph import Node, map_refs, refs_in
from ..ir.ops import Op
from ..nn.functional import FUNCTIONS, resolve_aten
from ..quant.dpu import DPU_FUNCTIONS
from ..quant.scales import quantize_param
from .onnx_builder import OnnxBuilder

__all__ = ["ConstantFolder"]

_RANDOM = ("rand", "normal", "bernoulli", "uniform", "dropout", "multinomial", "poisson", "exponential")
_BINARY = (Op.ADD, Op.SUB, Op.MUL, Op.DIV)
_META_ONLY = frozenset(
    f"aten.{name}.default"
    for name in ("new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like", "empty_like")
)


class ConstantFolder:
    """Which nodes fold, their torch values, and their initializers once something reads them."""

    def __init__(self, b: OnnxBuilder) -> None:
        self.b, self.graph, self.plan = b, b.graph, b.plan
        self.values: dict[str, Any] = {}

    def folds(self, node: Node) -> bool:
        if node.op is Op.CONST:
            return True
        if node.op is Op.ATEN and node.attrs["target"] in _META_ONLY:
            return all(isinstance(d, int) for d in node.meta.shape)
        if not node.inputs and node.op is not Op.ATEN:
            return False
        if node.op is Op.ATEN and any(r in node.attrs["target"] for r in _RANDOM):
            return False
        if node.op in DPU_FUNCTIONS or not (node.op in (Op.ATEN, Op.GETITEM) or node.op.value in FUNCTIONS):
            return False
        return all(i.name in self.values and i.name not in self.plan.outputs for i in node.inputs)

    def evaluate(self, node: Node) -> None:
        """Compute `node` in torch (call only when `folds(node)`)."""
        if node.op is Op.CONST:
            self.values[node.name] = None  # computed when a folding node reads it
            return
        inputs = [self._value(i) if i.name in self.values else _stand_in(i) for i in node.inputs]
        if node.op is Op.GETITEM:
            self.values[node.name] = inputs[0][node.attrs["index"]]
            return

        def resolve(value: Any) -> Any:
            return _torch_const(map_refs(value, lambda r: inputs[r.index]))

        if node.op is Op.ATEN:
            fn = resolve_aten(node.attrs["target"])
            args, kwargs = resolve(node.attrs["args"]), resolve(node.attrs["kwargs"])
        elif node.op in _BINARY:  # as codegen's emitter calls them: other as an operand, alpha only if set
            other = node.attrs["other"]
            fn, args = FUNCTIONS[node.op.value], [*inputs, *([] if other is None else [other])]
            kwargs = {k: v for k, v in node.attrs.items() if k != "other" and v not in (None, 1)}
        elif node.op is Op.CAT:
            fn, args, kwargs = FUNCTIONS["cat"], [inputs], {"dim": node.attrs["dim"]}
        else:
            used = {r.index for r in refs_in(node.attrs)}
            fn, args = FUNCTIONS[node.op.value], [v for k, v in enumerate(inputs) if k not in used]
            kwargs = {k: resolve(v) for k, v in node.attrs.items()}
        with torch.no_grad():
            self.values[node.name] = fn(*args, **kwargs)

    def _value(self, node: Node) -> Any:
        if self.values[node.name] is None:
            self.values[node.name] = self._param(node.params["value"])
        return self.values[node.name]

    def _param(self, key: str) -> torch.Tensor:
        """A parameter as the simulation uses it (ParamQuant): fake-quantized where it has a calibrated point."""
        t = self.graph.params[key].detach()
        spec = self.b.param_spec(key) if t.is_floating_point() else None
        if spec is None or (spec.is_int and not spec.derived and spec.fix_pos is None):
            return t
        return quantize_param(t.float(), spec, self.b.param_calibs[key]).to(t.dtype)

    def materialize(self, nodes: list[Node]) -> None:
        """Write the folded values among `nodes` as initializers (and their points) if not yet written."""
        b = self.b
        for node in nodes:
            if node.op is Op.CONST and node.name not in b.value:
                b.value[node.name] = b.weight(node, "value")  # int8 and DequantizeLinear, as _const writes it
            elif node.name in self.values and node.name not in b.value:
                value = self._value(node)
                if isinstance(value, torch.Tensor):
                    array = value.detach().cpu().contiguous().numpy()
                    b.emit(node, b.init(f"{node.name}_folded", np.array(array)))
                else:  # a tuple: its elements are read through getitem, which folds too
                    b.value[node.name] = node.name


def _stand_in(node: Node) -> torch.Tensor:
    """A tensor of `node`'s data type (and shape, where known) for an op that reads nothing else of it."""
    shape = [d if isinstance(d, int) else 1 for d in node.meta.shape]
    return torch.zeros(shape, dtype=getattr(torch, node.meta.dtype))


def _torch_const(value: Any) -> Any:
    """TorchConst leaves (dtypes, layouts, the device) as the torch objects they name."""
    if isinstance(value, TorchConst):
        return torch.device("cpu") if value.expr == "device" else getattr(torch, value.expr.removeprefix("torch."))
    if isinstance(value, list | tuple):
        return type(value)(_torch_const(v) for v in value)
    if isinstance(value, dict):
        return {k: _torch_const(v) for k, v in value.items()}
    return value

"""Lower a quantized graph to XIR ops (SPEC 5): NHWC, OHWI weights, `fix` after every quantized tensor.

The result is a list of `XOp` in topological order, independent of the file format; `xmodel.py` writes
it. Per-op lowering lives in `LOWERINGS`; an op with no XIR equivalent becomes a custom op (XIR registers
unknown types with `shape` and `data_type` attributes) and is reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._tables import registrar
from ..errors import NndctError
from ..ir.batch import evaluate_dim
from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import Op, reduced_axes
from ..quant.dpu import DPU_LEAKY_SLOPE
from ..quant.plan import QuantPlan
from ..quant.primitives import avgpool_factor, fake_quantize
from ..quant.spec import QuantSpec
from ..quant.table import QuantTable

__all__ = [
    "ATEN_LOWERINGS",
    "CUSTOM_REASONS",
    "LOWERINGS",
    "DeployGraph",
    "XOp",
    "fixed_batch",
    "float32_bytes",
    "lower",
    "sanitize",
]


def sanitize(name: str) -> str:
    """XIR names: every character outside [0-9A-Za-z] becomes '_' (one for one)."""
    return re.sub(r"[^0-9A-Za-z]", "_", name)


@dataclass
class XOp:
    name: str
    type: str
    shape: list[int]
    attrs: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (AttrValue kind, value)
    args: dict[str, list[str]] = field(default_factory=dict)
    fix: tuple[int, int] | None = None  # (bit_width, fix_point) when this op is a `fix`
    node: str = ""  # the graph node it comes from


@dataclass
class DeployGraph:
    name: str
    ops: list[XOp] = field(default_factory=list)
    custom: dict[str, str] = field(default_factory=dict)  # op name -> why it is a custom op


_BLOCK = 1 << 20  # elements converted at a time by float32_bytes


def float32_bytes(values: torch.Tensor, grid: QuantSpec | None = None) -> bytearray:
    """`values` (in their logical order, any strides) as little-endian float32, fake-quantized onto `grid`.

    Filled a block of leading-dimension slices at a time: a large weight (vgg's 400 MB fc6) is never copied
    whole, neither for its layout (a permuted view) nor for its rounding, so the deploy graph holds one
    float32 copy of the weights and nothing more.
    """
    values = values.detach()
    values = values.reshape(1) if values.dim() == 0 else values
    if grid is not None and (grid.scale is not None or grid.float_scale):  # a step from the whole tensor
        values, grid = fake_quantize(values.to(torch.float32), grid), None
    out = bytearray(4 * values.numel())
    flat = np.frombuffer(out, dtype="<f4")
    rows = max(1, _BLOCK // max(1, values[0].numel())) if len(values) else 1
    start = 0
    for block in values.split(rows):
        block = block.to(torch.float32)
        if grid is not None:
            block = fake_quantize(block, grid)
        part = block.cpu().contiguous().numpy().reshape(-1)
        flat[start : start + part.size] = part
        start += part.size
    return out


_NHWC = [0, 2, 3, 1]  # physical (NHWC) dim i holds logical (NCHW) dim _NHWC[i]


class _Lowering:
    def __init__(self, graph: Graph, plan: QuantPlan, table: QuantTable, batch: int) -> None:
        self.graph, self.plan, self.table, self.batch = graph, plan, table, batch
        self.out = DeployGraph(graph.name)
        self.value: dict[str, str] = {}  # node name -> XOp name holding its (fixed) value
        self.params: dict[str, str] = {}  # param key -> name of its const (or const fix)
        self.param_specs = {p.key: p.spec for p in plan.params}
        self.nhwc: set[str] = set()  # nodes whose 4-D value is laid out NHWC (feature maps)
        self.converted: dict[tuple[str, bool], str] = {}  # (node, want NHWC) -> transposed copy

    # ------------------------------------------------------------------ helpers
    def op_name(self, node: Node, suffix: str = "") -> str:
        return sanitize(f"{self.graph.name}::{node.name}") + suffix

    def logical_shape(self, node: Node) -> list[int]:
        meta = node.meta
        if isinstance(meta, tuple):  # a multi-output op: describe it by its first tensor
            meta = next((m for m in meta if isinstance(m, TensorMeta)), None)
        if not isinstance(meta, TensorMeta):
            raise NndctError(f"{node.where()} has no tensor shape; it cannot be exported")
        return [d if isinstance(d, int) else self.concrete(node, d) for d in meta.shape]

    def concrete(self, node: Node, dim: str) -> int:
        """A symbolic dimension ('B', '12*B', ...) at this export's batch size."""
        try:
            return evaluate_dim(dim, self.batch)
        except (SyntaxError, ValueError) as exc:
            raise NndctError(
                f"{node.where()} has the dimension {dim!r}, which depends on more than the batch size; it cannot be "
                "exported with fixed shapes"
            ) from exc

    def phys_shape(self, node: Node) -> list[int]:
        dims = self.logical_shape(node)
        return [dims[i] for i in _NHWC] if node.name in self.nhwc else dims

    def phys_axis(self, node: Node, dim: int) -> int:
        rank = len(self.logical_shape(node))
        dim = dim % rank
        return _NHWC.index(dim) if node.name in self.nhwc else dim

    def value_as(self, src: Node, nhwc: bool) -> str:
        """src's value laid out NHWC (feature-map ops) or in its logical order (everything else)."""
        name = self.value[src.name]
        if (src.name in self.nhwc) == nhwc or len(self.logical_shape(src)) != 4:
            return name
        key = (src.name, nhwc)
        if key not in self.converted:
            dims = self.logical_shape(src)
            order = _NHWC if nhwc else [0, 3, 1, 2]
            shape = [dims[i] for i in _NHWC] if nhwc else dims
            op = XOp(f"{name}_{'nhwc' if nhwc else 'nchw'}", "transpose", shape, {"order": ("int32_vec", order)},
                     {"input": [name]}, node=src.name)  # fmt: skip
            self.converted[key] = self.add(op).name
        return self.converted[key]

    def inputs(self, node: Node, nhwc: bool | None = None) -> list[str]:
        """The node's tensor inputs in one layout: `nhwc`, or (None) the layout of its first input."""
        if nhwc is None:
            nhwc = self.follows_nhwc(node)
        return [self.value_as(i, nhwc) for i in node.inputs]

    def follows_nhwc(self, node: Node) -> bool:
        return bool(node.inputs) and node.inputs[0].name in self.nhwc and len(self.logical_shape(node)) == 4

    def add(self, op: XOp) -> XOp:
        self.out.ops.append(op)
        return op

    def fix_after(self, producer: XOp, key: str, source: str) -> str:
        spec = self.table.params.get(key) or self.table.outputs.get(key)
        if spec is None or spec.fix_pos is None:
            return producer.name
        fix = XOp(
            f"{producer.name}_fix",
            "fix",
            list(producer.shape),
            {
                "fix_point": ("int32", spec.fix_pos),
                "bit_width": ("int32", spec.bitwidth),
                "round_mode": ("string", "DPU_ROUND"),
                "if_signed": ("bool", True),
            },
            {"input": [producer.name]},
            fix=(spec.bitwidth, spec.fix_pos),
            node=source,
        )
        return self.add(fix).name

    def const(self, name: str, values: torch.Tensor, key: str | None, source: str) -> str:
        """A const op (fake-quantized values when `key` names a quantized parameter), then its fix."""
        spec = self.param_specs.get(key) if key else None
        fp = self.table.params[key].fix_pos if spec is not None and key in self.table.params else None
        grid = spec.with_fix_pos(fp) if spec is not None and fp is not None else None
        shape = list(values.shape) or [1]
        attrs = {"shape": ("int32_vec", shape), "data_type": ("string", "float32"),
                 "data": ("bytes", float32_bytes(values, grid))}  # fmt: skip
        op = XOp(name, "const", shape, attrs, node=source)
        self.add(op)
        return self.fix_after(op, key, source) if key else op.name

    def param(self, node: Node, role: str, layout: Callable[[torch.Tensor], torch.Tensor] | None = None) -> str:
        key = node.params[role]
        if key not in self.params:
            t = self.graph.params[key]
            self.params[key] = self.const(sanitize(f"{self.graph.name}::{key}"), layout(t) if layout else t, key,
                                          node.name)  # fmt: skip
        return self.params[key]

    def emit(self, node: Node, op: XOp, nhwc: bool = False) -> None:
        """Add the op computing `node` (its shape already in the layout `nhwc`), then its fix if quantized."""
        if nhwc:
            self.nhwc.add(node.name)
        op.node = node.name
        self.add(op)
        key = self.plan.tensor_point.get(node.name)
        quantized_here = node.name in self.plan.outputs
        self.value[node.name] = self.fix_after(op, key, node.name) if quantized_here and key else op.name

    def custom(self, node: Node, why: str) -> None:
        name = self.op_name(node)
        shape = self.phys_shape(node)
        kind = node.op.value if node.op is not Op.ATEN else sanitize(node.attrs["target"])
        op = XOp(name, f"nndct_{kind}", shape,
                 {"shape": ("int32_vec", shape), "data_type": ("string", "FLOAT32")},
                 {"input": [self.value_as(i, False) for i in node.inputs if i.name in self.value]})  # fmt: skip
        self.out.custom[name] = why
        self.emit(node, op)

    def run(self) -> DeployGraph:
        for node in self.graph.nodes:
            fn = LOWERINGS.get(node.op)
            if fn is None and node.op is Op.ATEN:
                fn = ATEN_LOWERINGS.get(node.attrs["target"])
            if fn is None:
                self.custom(node, _custom_reason(node))
                continue
            fn(self, node)
        return self.out


Lower = Callable[[_Lowering, Node], None]
LOWERINGS: dict[Op, Lower] = {}
ATEN_LOWERINGS: dict[str, Lower] = {}  # Op.ATEN nodes, by target, that XIR has a built-in for


lowers = registrar(LOWERINGS)
lowers_aten = registrar(ATEN_LOWERINGS)

# Ops with no entry in LOWERINGS: written as `nndct_<op>` custom ops, for this reason.
CUSTOM_REASONS: dict[Op, str] = {
    Op.EMBEDDING: "XIR has no gather op: the table lookup runs on the CPU (its table quantized as weights)",
    Op.LAYER_NORM: "XIR 3.5 has no layernorm op (only batchnorm, instancenorm and groupnorm)",
    Op.BATCH_NORM: "not reached: the passes turn every batch norm into channel_scale (written as `scale`)",
    Op.CONV1D: "not lowered yet: XIR's conv1d reads [N, L, C] values, a layout the exporter does not track",
    Op.CONV3D: "not lowered yet: XIR's conv3d reads NHWDC values, a layout the exporter does not track",
    Op.CONV_TRANSPOSE1D: "not lowered yet: XIR's transposed convolutions (weight flip, pads) are not verified",
    Op.CONV_TRANSPOSE2D: "not lowered yet: XIR's transposed convolutions (weight flip, pads) are not verified",
    Op.CONV_TRANSPOSE3D: "not lowered yet: XIR's transposed convolutions (weight flip, pads) are not verified",
    Op.PIXEL_SHUFFLE: "XIR's pixel-shuffle works on NHWC values, and its channel order is not confirmed to be "
    "PyTorch's",
    Op.ATEN: "written through ATEN_LOWERINGS where XIR has a built-in for the target; other targets (sqrt, pow, "
    "embedding, cumsum, ...) have none",
}


def _custom_reason(node: Node) -> str:
    if node.op is Op.ATEN:
        return f"{node.attrs['target']} has no XIR built-in"
    return f"{node.op.value}: {CUSTOM_REASONS.get(node.op, 'has no XIR lowering yet')}"


def _spatial(lw: _Lowering, node: Node) -> bool:
    """Feature-map ops work on NHWC values: mark the node so its shape is written NHWC."""
    if len(lw.logical_shape(node)) == 4:
        lw.nhwc.add(node.name)
        return True
    return False


@lowers(Op.INPUT)
def _input(lw: _Lowering, node: Node) -> None:
    nhwc = _spatial(lw, node)
    shape = lw.phys_shape(node)
    attrs = {"shape": ("int32_vec", shape), "data_type": ("string", "FLOAT32")}
    lw.emit(node, XOp(lw.op_name(node), "data", shape, attrs), nhwc)


@lowers(Op.CONST)
def _const(lw: _Lowering, node: Node) -> None:
    lw.value[node.name] = lw.param(node, "value")  # logical layout; value_as transposes where needed


def _pads(padding: Any, kernel: list[int], dilation: list[int]) -> list[int]:
    """PyTorch padding ([ph, pw], 'same' or 'valid') as XIR {left, right, top, bottom}."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return [tw // 2, tw - tw // 2, th // 2, th - th // 2]
    ph, pw = padding
    return [pw, pw, ph, ph]


@lowers(Op.CONV2D)
def _conv2d(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    w = lw.graph.params[node.params["weight"]]
    cout, cin_g, kh, kw = w.shape
    cin = cin_g * a["groups"]
    depthwise = a["groups"] == cin and cout == cin and cin > 1
    if depthwise:
        weights = lw.param(node, "weight", lambda t: t.permute(1, 2, 3, 0))  # [C,1,kh,kw] -> [1,kh,kw,C]
    else:
        weights = lw.param(node, "weight", lambda t: t.permute(0, 2, 3, 1))  # OIHW -> OHWI
    args = {"input": [lw.value_as(node.inputs[0], True)], "weights": [weights], "bias": []}
    if "bias" in node.params:
        args["bias"] = [lw.param(node, "bias")]
    attrs = {
        "kernel": ("int32_vec", [kw, kh]),
        "stride": ("int32_vec", [a["stride"][1], a["stride"][0]]),
        "dilation": ("int32_vec", [a["dilation"][1], a["dilation"][0]]),
        "pad": ("int32_vec", _pads(a["padding"], [kh, kw], a["dilation"])),
        "pad_mode": ("string", "FLOOR"),
        "in_dim": ("int32", cin),
        "out_dim": ("int32", cout),
        "bias_term": ("bool", "bias" in node.params),
    }
    if not depthwise:
        attrs["group"] = ("int32", a["groups"])
    kind = "depthwise-conv2d" if depthwise else "conv2d"
    _spatial(lw, node)
    lw.emit(node, XOp(lw.op_name(node), kind, lw.phys_shape(node), attrs, args), True)


@lowers(Op.LINEAR)
def _linear(lw: _Lowering, node: Node) -> None:
    args = {"input": [lw.value_as(node.inputs[0], False), lw.param(node, "weight")], "bias": []}
    if "bias" in node.params:
        args["bias"] = [lw.param(node, "bias")]
    attrs = {"transpose_a": ("bool", False), "transpose_b": ("bool", True)}
    lw.emit(node, XOp(lw.op_name(node), "matmul", lw.phys_shape(node), attrs, args))


@lowers(Op.MATMUL)
def _matmul(lw: _Lowering, node: Node) -> None:
    if any(len(lw.logical_shape(i)) < 2 for i in node.inputs):
        lw.custom(node, "matmul of a 1-D tensor")
        return
    attrs = {"transpose_a": ("bool", False), "transpose_b": ("bool", False)}
    lw.emit(
        node, XOp(lw.op_name(node), "matmul", lw.phys_shape(node), attrs, {"input": lw.inputs(node, False), "bias": []})
    )


@lowers(Op.CHANNEL_SCALE)
def _channel_scale(lw: _Lowering, node: Node) -> None:
    rank = len(lw.logical_shape(node))
    if rank not in (2, 4):
        lw.custom(node, f"a per-channel scale on a {rank}-D tensor")
        return
    nhwc = _spatial(lw, node)
    args = {"input": lw.inputs(node, nhwc), "scale": [lw.param(node, "weight")], "bias": [lw.param(node, "bias")]}
    lw.emit(node, XOp(lw.op_name(node), "scale", lw.phys_shape(node), {"axis": ("int32", -1)}, args), nhwc)


_ELTWISE = {Op.ADD: "add", Op.SUB: "sub", Op.MUL: "mul", Op.DIV: "div"}


@lowers(*_ELTWISE)
def _eltwise(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    if a.get("alpha", 1) != 1:
        lw.custom(node, f"{node.op.value} with alpha {a['alpha']}")
        return
    if a.get("rounding_mode") is not None:
        lw.custom(node, f"div with rounding_mode={a['rounding_mode']!r}: XIR's div is a true division")
        return
    nhwc = lw.follows_nhwc(node)
    if nhwc:
        lw.nhwc.add(node.name)
    inputs = lw.inputs(node, nhwc)
    if a["other"] is not None:
        inputs.append(lw.const(lw.op_name(node, "_other"), torch.tensor([float(a["other"])]), None, node.name))
    lw.emit(node, XOp(lw.op_name(node), _ELTWISE[node.op], lw.phys_shape(node), {}, {"input": inputs}), nhwc)


@lowers(Op.CAT)
def _cat(lw: _Lowering, node: Node) -> None:
    nhwc = lw.follows_nhwc(node)
    if nhwc:
        lw.nhwc.add(node.name)
    attrs = {"axis": ("int32", lw.phys_axis(node, node.attrs["dim"]))}
    lw.emit(node, XOp(lw.op_name(node), "concat", lw.phys_shape(node), attrs, {"input": lw.inputs(node, nhwc)}), nhwc)


def _pool_attrs(kernel: list[int], stride: list[int], padding: list[int], ceil: bool) -> dict[str, tuple[str, Any]]:
    return {
        "kernel": ("int32_vec", [kernel[1], kernel[0]]),
        "stride": ("int32_vec", [stride[1], stride[0]]),
        "pad": ("int32_vec", [padding[1], padding[1], padding[0], padding[0]]),
        "pad_mode": ("string", "CEIL" if ceil else "FLOOR"),
    }


@lowers(Op.MAX_POOL2D)
def _max_pool(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    if list(a["dilation"]) != [1, 1]:
        lw.custom(node, "max pooling with dilation")
        return
    attrs = _pool_attrs(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])
    _spatial(lw, node)
    op = XOp(lw.op_name(node), "maxpool2d", lw.phys_shape(node), attrs, {"input": lw.inputs(node, True)})
    lw.emit(node, op, True)


def _avgpool(lw: _Lowering, node: Node, kernel: list[int], stride: list[int], padding: list[int], ceil: bool,
             count_include_pad: bool, is_global: bool) -> None:  # fmt: skip
    """avgpool2d, then a mul by k * M / 2^S: the DPU's window sum times M / 2^S (SPEC 2.4)."""
    attrs = _pool_attrs(kernel, stride, padding, ceil)
    attrs["count_include_pad"] = ("bool", count_include_pad)
    attrs["global"] = ("bool", is_global)
    _spatial(lw, node)
    shape = lw.phys_shape(node)
    pool = lw.add(
        XOp(lw.op_name(node, "_avgpool"), "avgpool2d", shape, attrs, {"input": lw.inputs(node, True)}, node=node.name)
    )
    k = kernel[0] * kernel[1]
    m, s = avgpool_factor(k)
    factor = lw.const(lw.op_name(node, "_factor"), torch.tensor([k * m / 2**s]), None, node.name)
    lw.emit(node, XOp(lw.op_name(node), "mul", shape, {}, {"input": [pool.name, factor]}), True)


@lowers(Op.AVG_POOL2D)
def _avg_pool(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    if a["divisor_override"] is not None:
        lw.custom(node, "average pooling with divisor_override")
        return
    _avgpool(lw, node, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], False)


@lowers(Op.ADAPTIVE_AVG_POOL2D)
def _adaptive_avg_pool(lw: _Lowering, node: Node) -> None:
    h, w = lw.logical_shape(node.inputs[0])[2:]
    oh, ow = lw.logical_shape(node)[2:]
    if h % oh or w % ow:
        lw.custom(node, f"adaptive average pooling {h}x{w} -> {oh}x{ow} has no fixed kernel")
        return
    k = [h // oh, w // ow]
    _avgpool(lw, node, k, k, [0, 0], False, True, oh == 1 and ow == 1)


_ACTIVATIONS = {
    Op.RELU: "relu",
    Op.RELU6: "relu6",
    Op.SIGMOID: "sigmoid",
    Op.TANH: "tanh",
    Op.HARDSIGMOID: "hard-sigmoid",
    Op.HARDSWISH: "hard-swish",
    Op.SILU: "swish",
    Op.GELU: "gelu",
}


@lowers(*_ACTIVATIONS)
def _activation(lw: _Lowering, node: Node) -> None:
    if node.op is Op.GELU and node.attrs["approximate"] != "none":
        lw.custom(node, f"gelu with approximate={node.attrs['approximate']!r}: XIR's gelu is the erf form")
        return
    _elementwise(lw, node, _ACTIVATIONS[node.op])


def _elementwise(lw: _Lowering, node: Node, kind: str, attrs: dict[str, tuple[str, Any]] | None = None) -> None:
    """A one-input element-wise op: it keeps its input's layout."""
    nhwc = lw.follows_nhwc(node)
    if nhwc:
        lw.nhwc.add(node.name)
    op = XOp(lw.op_name(node), kind, lw.phys_shape(node), attrs or {}, {"input": [lw.value_as(node.inputs[0], nhwc)]})
    lw.emit(node, op, nhwc)


@lowers(Op.LEAKY_RELU)
def _leaky_relu(lw: _Lowering, node: Node) -> None:
    nhwc = lw.follows_nhwc(node)
    if nhwc:
        lw.nhwc.add(node.name)
    attrs = {"alpha": ("float", DPU_LEAKY_SLOPE)}
    op = XOp(lw.op_name(node), "leaky-relu", lw.phys_shape(node), attrs, {"input": lw.inputs(node, nhwc)})
    lw.emit(node, op, nhwc)


@lowers(Op.SOFTMAX)
def _softmax(lw: _Lowering, node: Node) -> None:
    attrs = {"axis": ("int32", lw.phys_axis(node, node.attrs["dim"]))}
    lw.emit(node, XOp(lw.op_name(node), "softmax", lw.phys_shape(node), attrs, {"input": lw.inputs(node, False)}))


@lowers(Op.PERMUTE, Op.TRANSPOSE)
def _permute(lw: _Lowering, node: Node) -> None:
    rank = len(lw.logical_shape(node.inputs[0]))
    if node.op is Op.PERMUTE:
        perm = [d % rank for d in node.attrs["dims"]]
    else:
        perm = list(range(rank))
        d0, d1 = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
        perm[d0], perm[d1] = perm[d1], perm[d0]
    attrs = {"order": ("int32_vec", perm)}
    lw.emit(node, XOp(lw.op_name(node), "transpose", lw.phys_shape(node), attrs, {"input": lw.inputs(node, False)}))


@lowers(Op.FLATTEN, Op.RESHAPE, Op.CONTIGUOUS, Op.UNSQUEEZE, Op.SQUEEZE)
def _reshape(lw: _Lowering, node: Node) -> None:
    src = node.inputs[0]
    if lw.logical_shape(src) == lw.logical_shape(node) and node.name not in lw.plan.outputs:
        lw.value[node.name] = lw.value[src.name]
        if src.name in lw.nhwc:
            lw.nhwc.add(node.name)
        return
    dims = lw.logical_shape(src)
    same_order = src.name in lw.nhwc and dims[2] * dims[3] == 1  # NHWC and NCHW agree when H = W = 1
    source = lw.value[src.name] if same_order else lw.value_as(src, False)
    shape = lw.phys_shape(node)
    lw.emit(node, XOp(lw.op_name(node), "reshape", shape, {"shape": ("int32_vec", shape)}, {"input": [source]}))


@lowers(Op.SIZE, Op.SCALAR)
def _shape_arithmetic(lw: _Lowering, node: Node) -> None:
    """Sizes are concrete in a deployed graph: reshapes take their target shape from the node's meta."""


@lowers(Op.MEAN)
def _mean(lw: _Lowering, node: Node) -> None:
    src = node.inputs[0]
    keep = bool(node.attrs["keepdim"])
    nhwc = src.name in lw.nhwc and keep  # a keep-dims mean of a feature map stays a feature map
    axes = reduced_axes(node.attrs["dim"], len(lw.logical_shape(src)))
    axes = sorted(_NHWC.index(d) for d in axes) if nhwc else axes
    if nhwc:
        lw.nhwc.add(node.name)
    attrs = {"axis": ("int32_vec", axes), "keep_dims": ("bool", keep)}
    op = XOp(lw.op_name(node), "reduction_mean", lw.phys_shape(node), attrs, {"input": lw.inputs(node, nhwc)})
    lw.emit(node, op, nhwc)


def fixed_batch(graph: Graph) -> int | None:
    """The batch size a graph was captured with when it is not symbolic ('B'), else None."""
    for node in graph.nodes:
        if isinstance(node.meta, TensorMeta) and "B" in node.meta.shape:
            return None
    first = graph.inputs[0].meta if graph.inputs else None
    return first.shape[0] if isinstance(first, TensorMeta) and first.shape else None


def lower(graph: Graph, plan: QuantPlan, table: QuantTable, batch: int | None = None) -> DeployGraph:
    """The deploy graph of a quantized model at batch size `batch` (default: 1, or the captured batch)."""
    fixed = fixed_batch(graph)
    if batch is None:
        batch = fixed or 1
    if batch < 1:
        raise NndctError(f"batch size must be at least 1, got {batch}")
    rounded = [
        k for k, s in (*table.params.items(), *table.outputs.items()) if not s.is_int and s.dtype.value != "float32"
    ]
    if rounded:
        raise NndctError(
            f"the .xmodel holds integer (fix) and float32 tensors, but the quant config rounds {len(rounded)} "
            f"tensor(s) to a 16-bit float type (e.g. {rounded[0]}). Fix: export ONNX (export_onnx_model), or use "
            "datatype int or float32 for a DPU model."
        )
    if fixed is not None and batch != fixed:
        raise NndctError(
            f"{graph.name} was captured with its batch size fixed at {fixed}, so it cannot be exported at batch "
            f"size {batch}. Fix: export with batch_size={fixed}, or make the model's code follow the batch (the "
            "warning given at capture names the line that fixes it)."
        )
    return _Lowering(graph, plan, table, batch).run()


def _strided_slice(lw: _Lowering, node: Node, src: Node, dim: int, start: int, end: int, step: int,
                   quantized: bool = False) -> None:  # fmt: skip
    """`src[..., start:end:step, ...]` along logical `dim`, in src's layout (then its fix, if quantized)."""
    nhwc = src.name in lw.nhwc
    if nhwc:
        lw.nhwc.add(node.name)
    dims = lw.phys_shape(src)
    axis = lw.phys_axis(src, dim)
    begin, stop, strides = [0] * len(dims), list(dims), [1] * len(dims)
    begin[axis], stop[axis], strides[axis] = start, end, step
    attrs = {"begin": ("int32_vec", begin), "end": ("int32_vec", stop), "strides": ("int32_vec", strides)}
    op = XOp(lw.op_name(node), "strided_slice", lw.phys_shape(node), attrs, {"input": [lw.value[src.name]]})
    if quantized:
        op.node = node.name
        lw.add(op)
        lw.value[node.name] = lw.fix_after(op, lw.plan.tensor_point[node.name], node.name)
    else:
        lw.emit(node, op, nhwc)


def _bounds(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else (end + size if end < 0 else end)
    return max(0, min(start, size)), max(0, min(end, size))


@lowers(Op.SLICE)
def _slice(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    src = node.inputs[0]
    rank = len(lw.logical_shape(src))
    dim = a["dim"] % rank
    if any(isinstance(v, str) or hasattr(v, "index") for v in (a["start"], a["end"])):
        lw.custom(node, "a slice with symbolic bounds")
        return
    start, end = _bounds(lw.logical_shape(src)[dim], a["start"], a["end"])
    _strided_slice(lw, node, src, dim, start, end, a["step"])


@lowers(Op.CHUNK, Op.SPLIT)
def _chunk(lw: _Lowering, node: Node) -> None:
    """No op of its own: each element read through getitem becomes a strided_slice of the input."""
    lw.value[node.name] = lw.value[node.inputs[0].name]


def _piece(lw: _Lowering, parent: Node, index: int) -> tuple[int, int, int]:
    """(dim, start, end) of element `index` of a chunk / split node."""
    src = parent.inputs[0]
    rank = len(lw.logical_shape(src))
    dim = parent.attrs["dim"] % rank
    size = lw.logical_shape(src)[dim]
    if parent.op is Op.CHUNK:
        step = -(-size // parent.attrs["chunks"])
        sizes = [min(step, size - k) for k in range(0, size, step)]
    else:
        split = parent.attrs["split_size"]
        sizes = list(split) if isinstance(split, list) else [min(split, size - k) for k in range(0, size, split)]
    start = sum(sizes[:index])
    return dim, start, start + sizes[index]


@lowers(Op.GETITEM)
def _getitem(lw: _Lowering, node: Node) -> None:
    parent = node.inputs[0]
    if parent.op not in (Op.CHUNK, Op.SPLIT):
        lw.custom(node, f"element {node.attrs['index']} of {parent.op.value}")
        return
    dim, start, end = _piece(lw, parent, node.attrs["index"])
    # a point on the chunk quantizes every piece with it
    _strided_slice(lw, node, parent.inputs[0], dim, start, end, 1, quantized=parent.name in lw.plan.outputs)


@lowers(Op.INTERPOLATE)
def _interpolate(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    src = node.inputs[0]
    if len(lw.logical_shape(src)) != 4 or a["mode"] not in ("nearest", "bilinear"):
        lw.custom(node, f"{a['mode']} resampling of a {len(lw.logical_shape(src))}-D tensor")
        return
    (h, w), (oh, ow) = lw.logical_shape(src)[2:], lw.logical_shape(node)[2:]
    align = bool(a["align_corners"])
    attrs = {
        "mode": ("string", a["mode"].upper()),
        "align_corners": ("bool", align),
        "half_pixel_centers": ("bool", a["mode"] == "bilinear" and not align),
        "scale": ("float_vec", [ow / w, oh / h]),
    }
    _spatial(lw, node)
    lw.emit(node, XOp(lw.op_name(node), "resize", lw.phys_shape(node), attrs, {"input": lw.inputs(node, True)}), True)


_PAD_MODES = {"constant": "CONSTANT", "reflect": "REFLECT"}  # replicate: SYMMETRIC when no pad exceeds 1


@lowers(Op.PAD)
def _pad(lw: _Lowering, node: Node) -> None:
    a = node.attrs
    src = node.inputs[0]
    rank = len(lw.logical_shape(src))
    mode = _PAD_MODES.get(a["mode"])
    if a["mode"] == "replicate" and max(a["pad"], default=0) <= 1:
        mode = "SYMMETRIC"  # mirroring with the edge repeats the edge once: replicate's pads of 1
    if mode is None or len(a["pad"]) % 2 or len(a["pad"]) > 2 * rank:
        lw.custom(node, f"{a['mode']} padding")
        return
    per_dim = [[0, 0] for _ in range(rank)]
    for k in range(len(a["pad"]) // 2):  # torch lists the last dimension first
        per_dim[rank - 1 - k] = [a["pad"][2 * k], a["pad"][2 * k + 1]]
    nhwc = src.name in lw.nhwc
    if nhwc:
        lw.nhwc.add(node.name)
        per_dim = [per_dim[i] for i in (0, 2, 3, 1)]
    attrs = {
        "paddings": ("int32_vec", [p for pair in per_dim for p in pair]),
        "mode": ("string", mode),
    }
    if mode == "CONSTANT":
        attrs["constant_values"] = ("float_vec", [float(a["value"] or 0.0)] * (2 * rank))
    lw.emit(node, XOp(lw.op_name(node), "pad", lw.phys_shape(node), attrs, {"input": [lw.value[src.name]]}), nhwc)


def _xir_attr(value: Any) -> tuple[str, Any] | None:
    """A custom op attribute as an XIR AttrValue (kind, value); None for values XIR cannot hold."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int32", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, str):
        return "string", value
    if isinstance(value, list | tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "int32_vec", list(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
        return "float_vec", [float(v) for v in value]
    return None


@lowers(Op.CUSTOM)
def _custom(lw: _Lowering, node: Node) -> None:
    """A register_custom_op op: an XIR op of type op_type with its named attributes (VAIQ35 6); the compiler
    places it on the CPU, where the user supplies its implementation. 4-D values are NHWC, as XIR's are."""
    nhwc = _spatial(lw, node)
    shape = lw.phys_shape(node)
    attrs = {"shape": ("int32_vec", shape), "data_type": ("string", "FLOAT32")}
    for name, value in node.attrs["op_attrs"].items():
        attr = _xir_attr(value)
        if attr is None:
            raise NndctError(f"{node.where()}: attribute {name}={value!r} of custom op cannot be written to XIR")
        attrs[name] = attr
    args = {"input": [lw.value_as(i, nhwc) for i in node.inputs if i.name in lw.value]}
    op = XOp(lw.op_name(node), node.attrs["op_type"], shape, attrs, args)
    lw.out.custom[op.name] = f"custom op {node.attrs['op_type']}: runs on the CPU with your implementation"
    lw.emit(node, op, nhwc)


from . import deploy_ops  # noqa: E402, F401  (fills LOWERINGS and ATEN_LOWERINGS with more built-ins)

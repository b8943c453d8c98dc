"""ONNX export in QDQ form (SPEC 6).

Every quantization point is QuantizeLinear -> DequantizeLinear with scale 2^-fp (or its float step);
activations are written as uint8 with zero point 128 (the same grid as int8 with zero point 0). Weights are
int8 initializers followed by DequantizeLinear; a bias is an int32 initializer at the scale input x weight
(its 8-bit value shifted, exact), so onnxruntime can fuse conv / matmul into integer kernels. How each kind
of point is written (float steps, zero points, wider grids, float data types): `onnx_builder`.

ONNX rounds ties to even where the DPU rounds half up, so outputs can differ from our simulation by one
LSB at exact ties. Ops with no ONNX lowering here are refused with the node's name.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import NndctError
from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import Op, reduced_axes
from ..quant.dpu import HSIGMOID_M, HSIGMOID_S
from ..quant.plan import QuantPlan
from ..quant.table import QuantTable
from . import onnx_aten, onnx_aten_tensor, onnx_ops  # noqa: F401 (their lowerings fill ONNX_LOWERINGS)
from .onnx_builder import ONNX_LOWERINGS, OnnxBuilder, onnx_dtype, onnx_lowers
from .onnx_fold import ConstantFolder

__all__ = ["MIN_OPSET", "NOT_LOWERED", "ONNX_LOWERINGS", "OPSET", "build_onnx"]

OPSET = 17  # the default opset
MIN_OPSET = 13  # per-axis DequantizeLinear, Split with sizes as an input, bfloat16 Cast


_Builder = OnnxBuilder

# Ops with no entry in ONNX_LOWERINGS, and why.
NOT_LOWERED: dict[Op, str] = {
    Op.INPUT: "a graph input, written by build_onnx itself",
    Op.SIZE: "an int64 scalar written where an op needs it (onnx_ops.int_value)",
    Op.SCALAR: "size arithmetic written where an op needs it (onnx_ops.int_value)",
}


@onnx_lowers(Op.CONST)
def _const(b: _Builder, node: Node) -> None:
    b.value[node.name] = b.weight(node, "value")


@onnx_lowers(Op.CONV1D, Op.CONV2D, Op.CONV3D)
def _conv(b: _Builder, node: Node) -> None:
    a = node.attrs
    if isinstance(a["padding"], str):
        raise NndctError(f"{node.where()}: string padding {a['padding']!r} is not exported to ONNX yet")
    w = b.weight(node, "weight")
    inputs = [b.inp(node), w] + ([bias] if (bias := b.bias(node, node.inputs[0])) else [])
    pads = list(a["padding"]) * 2
    out = b.add("Conv", inputs, node.name, strides=list(a["stride"]), pads=pads, dilations=list(a["dilation"]),
                group=a["groups"])  # fmt: skip
    b.emit(node, out)


@onnx_lowers(Op.LINEAR)
def _linear(b: _Builder, node: Node) -> None:
    w = b.weight(node, "weight")
    wt = b.add("Transpose", [w], f"{node.name}_wT", perm=[1, 0])
    out = b.add("MatMul", [b.inp(node), wt], f"{node.name}_mm")
    bias = b.bias(node, node.inputs[0])
    if bias:
        out = b.add("Add", [out, bias], node.name)
    b.emit(node, out)


@onnx_lowers(Op.EMBEDDING)
def _embedding(b: _Builder, node: Node) -> None:
    """A lookup in the (quantized) table: Gather of its rows."""
    b.emit(node, b.add("Gather", [b.weight(node, "weight"), b.inp(node)], node.name, axis=0))


@onnx_lowers(Op.CHANNEL_SCALE)
def _channel_scale(b: _Builder, node: Node) -> None:
    rank = len(node.meta.shape)
    shape = np.array([1, -1] + [1] * (rank - 2), dtype=np.int64)
    sh = b.init(f"{node.name}_shape", shape)
    s = b.add("Reshape", [b.weight(node, "weight"), sh], f"{node.name}_s")
    t = b.add("Reshape", [b.weight(node, "bias"), sh], f"{node.name}_t")
    b.emit(node, b.add("Add", [b.add("Mul", [b.inp(node), s], f"{node.name}_mul"), t], node.name))


_BINARY = {Op.ADD: "Add", Op.SUB: "Sub", Op.MUL: "Mul", Op.DIV: "Div"}


@onnx_lowers(*_BINARY)
def _binary(b: _Builder, node: Node) -> None:
    a = node.attrs
    if a.get("alpha", 1) != 1 or a.get("rounding_mode") is not None:
        raise NndctError(f"{node.where()}: {node.op.value} with alpha/rounding_mode is not exported to ONNX yet")
    other = b.inp_as(node, 1, node) if a["other"] is None else b.const(f"{node.name}_other", a["other"], node)
    b.emit(node, b.add(_BINARY[node.op], [b.inp_as(node, 0, node), other], node.name))


_UNARY = {Op.RELU: "Relu", Op.SIGMOID: "Sigmoid", Op.TANH: "Tanh"}


@onnx_lowers(*_UNARY)
def _unary(b: _Builder, node: Node) -> None:
    if node.op is Op.RELU and b.integer_clamp(node, 0.0, math.inf):
        return
    b.emit(node, b.add(_UNARY[node.op], [b.inp(node)], node.name))


@onnx_lowers(Op.SILU)
def _silu(b: _Builder, node: Node) -> None:
    x = b.inp(node)
    b.emit(node, b.add("Mul", [x, b.add("Sigmoid", [x], f"{node.name}_sigmoid")], node.name))


@onnx_lowers(Op.MEAN)
def _mean(b: _Builder, node: Node) -> None:
    axes = reduced_axes(node.attrs["dim"], len(node.inputs[0].meta.shape))
    keep = int(bool(node.attrs["keepdim"]))
    if b.opset >= 18:  # axes became an input in opset 18
        ax = b.init(f"{node.name}_axes", np.array(axes, np.int64))
        b.emit(node, b.add("ReduceMean", [b.inp(node), ax], node.name, keepdims=keep))
    else:
        b.emit(node, b.add("ReduceMean", [b.inp(node)], node.name, axes=axes, keepdims=keep))


def _clip(b: _Builder, src: str, lo: float, hi: float, name: str) -> str:
    lo_name = b.init(f"{name}_lo", np.array(lo, np.float32))
    return b.add("Clip", [src, lo_name, b.init(f"{name}_hi", np.array(hi, np.float32))], name)


@onnx_lowers(Op.RELU6, Op.HARDTANH)
def _clamp(b: _Builder, node: Node) -> None:
    lo, hi = (0.0, 6.0) if node.op is Op.RELU6 else (node.attrs["min_val"], node.attrs["max_val"])
    if not b.integer_clamp(node, lo, hi):
        b.emit(node, _clip(b, b.inp(node), lo, hi, node.name))


@onnx_lowers(Op.LEAKY_RELU)
def _leaky(b: _Builder, node: Node) -> None:
    slope = 26 / 256 if b.dpu_math(node) else float(node.attrs["negative_slope"])
    b.emit(node, b.add("LeakyRelu", [b.inp(node)], node.name, alpha=slope))


def _hsig(b: _Builder, src: str, name: str, dpu: bool) -> str:
    three = b.init(f"{name}_three", np.array(3.0, np.float32))
    k = b.init(f"{name}_k", np.array(HSIGMOID_M / 2**HSIGMOID_S if dpu else 1 / 6, np.float32))
    return b.add("Mul", [_clip(b, b.add("Add", [src, three], f"{name}_add"), 0.0, 6.0, f"{name}_r6"), k], name)


@onnx_lowers(Op.HARDSIGMOID)
def _hardsigmoid(b: _Builder, node: Node) -> None:
    b.emit(node, _hsig(b, b.inp(node), node.name, b.dpu_math(node)))


@onnx_lowers(Op.HARDSWISH)
def _hardswish(b: _Builder, node: Node) -> None:
    h = _hsig(b, b.inp(node), f"{node.name}_hsig", b.dpu_math(node))
    if b.dpu_math(node):  # the DPU rounds its hard-sigmoid to 8 bits (quant/dpu.py)
        h = b.qdq(h, 8, 7, f"{node.name}_hsig")
    b.emit(node, b.add("Mul", [b.inp(node), h], node.name))


@onnx_lowers(Op.CAT)
def _cat(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Concat", [b.value[i.name] for i in node.inputs], node.name, axis=node.attrs["dim"]))


@onnx_lowers(Op.MAX_POOL2D)
def _maxpool(b: _Builder, node: Node) -> None:
    a = node.attrs
    out = b.add("MaxPool", [b.inp(node)], node.name, kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]),
                pads=list(a["padding"]) * 2, dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))  # fmt: skip
    b.emit(node, out)


@onnx_lowers(Op.FLATTEN)
def _flatten(b: _Builder, node: Node) -> None:
    a = node.attrs
    rank = len(node.inputs[0].meta.shape)
    if a["start_dim"] != 1 or a["end_dim"] not in (-1, rank - 1):
        _reshape(b, node)  # to the captured shape
    else:
        b.emit(node, b.add("Flatten", [b.inp(node)], node.name, axis=1))


@onnx_lowers(Op.SOFTMAX)
def _softmax(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Softmax", [b.inp(node)], node.name, axis=node.attrs["dim"]))


@onnx_lowers(Op.PERMUTE)
def _permute(b: _Builder, node: Node) -> None:
    b.emit(node, b.add("Transpose", [b.inp(node)], node.name, perm=list(node.attrs["dims"])))


def build_onnx(
    graph: Graph, plan: QuantPlan, table: QuantTable, quantized: bool = True, opset: int | None = None
):  # -> onnx.ModelProto
    """The QDQ ONNX model of a calibrated graph (batch dimension dynamic where it was captured so).

    With `quantized=False` the same graph is written in float (no Q/DQ): a baseline for benchmarks. `opset`:
    the ONNX opset, from MIN_OPSET to what the installed onnx package knows; by default the config's
    `onnx_opset_version` (plan.onnx_opset_version), else OPSET.
    """
    if opset is None:
        opset = plan.onnx_opset_version or OPSET
    if not quantized:
        plan, table = QuantPlan(), QuantTable(graph.name)
    try:
        import onnx
        from onnx import helper
    except ImportError as exc:
        raise NndctError("ONNX export needs the onnx package: pip install onnx") from exc
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise NndctError(
            f"ONNX opset {opset!r} cannot be exported: this exporter writes opsets {MIN_OPSET} to {newest} (the "
            f"installed onnx {onnx.__version__}). Fix: set onnx_opset_version (or opset_version) in that range."
        )
    b = _Builder(graph, plan, table, opset, dpu=quantized)
    folder = ConstantFolder(b)
    graph_inputs, graph_outputs = [], []
    for node in graph.nodes:
        if node.op is Op.INPUT:
            graph_inputs.append(helper.make_tensor_value_info(node.name, _dtype(node), _dims(node)))
            b.value[node.name] = node.name
            b.emit(node, node.name)
            continue
        if node.op in (Op.SIZE, Op.SCALAR):
            continue  # written where an op needs the size (onnx_ops.int_value)
        if folder.folds(node):
            folder.evaluate(node)
            continue
        folder.materialize(node.inputs)
        fn = ONNX_LOWERINGS.get(node.op)
        if fn is None:
            raise NndctError(
                f"{node.where()}: {node.op.value} has no ONNX lowering yet, so the model cannot be exported to ONNX. "
                "The .xmodel export writes such ops as custom ops."
            )
        fn(b, node)
    folder.materialize(graph.output_nodes)
    for k, node in enumerate(graph.output_nodes):
        if not isinstance(node.meta, TensorMeta):
            raise NndctError(f"{node.where()}: only tensor outputs can be exported to ONNX")
        name = graph.output_names()[k]  # a dict output's key, else output_k
        b.add("Identity", [b.value[node.name]], name)
        graph_outputs.append(helper.make_tensor_value_info(name, _dtype(node), _dims(node)))
    onnx_graph = helper.make_graph(b.nodes, graph.name, graph_inputs, graph_outputs, b.inits)
    opsets = [helper.make_opsetid("", opset)]
    if any(n.domain == CUSTOM_DOMAIN for n in b.nodes):
        opsets.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="pytorch_nndct")
    model.ir_version = max(8, _min_ir_version(opset))
    onnx.checker.check_model(model)
    return model


def _dtype(node: Node) -> int:
    return onnx_dtype(node.meta.dtype or "float32")


def _dims(node: Node) -> list[int | str]:
    return ["batch" if d == "B" else d for d in node.meta.shape]


def _min_ir_version(opset: int) -> int:
    """The oldest ONNX IR version that carries `opset` (onnx.helper.VERSION_TABLE)."""
    from onnx import helper

    versions = [row[1] for row in helper.VERSION_TABLE if row[2] >= opset]
    return min(versions) if versions else 8


def _int64(b: _Builder, name: str, values: list[int]) -> str:
    return b.init(name, np.array(values, dtype=np.int64))


@onnx_lowers(Op.RESHAPE, Op.UNSQUEEZE, Op.SQUEEZE, Op.CONTIGUOUS)
def _reshape(b: _Builder, node: Node) -> None:
    dims = node.meta.shape
    if sum(not isinstance(d, int) for d in dims) > 1:
        raise NndctError(f"{node.where()}: a reshape to {dims} has more than one symbolic dimension")
    shape = _int64(b, f"{node.name}_shape", [d if isinstance(d, int) else -1 for d in dims])
    b.emit(node, b.add("Reshape", [b.inp(node), shape], node.name))


@onnx_lowers(Op.TRANSPOSE)
def _transpose(b: _Builder, node: Node) -> None:
    rank = len(node.meta.shape)
    perm = list(range(rank))
    d0, d1 = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    b.emit(node, b.add("Transpose", [b.inp(node)], node.name, perm=perm))


@onnx_lowers(Op.SLICE)
def _slice(b: _Builder, node: Node) -> None:
    a = node.attrs
    if any(not isinstance(v, int | None) for v in (a["start"], a["end"])):
        raise NndctError(f"{node.where()}: a slice with symbolic bounds is not exported to ONNX yet")
    start = 0 if a["start"] is None else a["start"]
    end = 2**62 if a["end"] is None else a["end"]
    inputs = [b.inp(node)] + [_int64(b, f"{node.name}_{k}", [v]) for k, v in
                              (("starts", start), ("ends", end), ("axes", a["dim"]), ("steps", a["step"]))]  # fmt: skip
    b.emit(node, b.add("Slice", inputs, node.name))


@onnx_lowers(Op.CHUNK, Op.SPLIT)
def _split(b: _Builder, node: Node) -> None:
    """One Split; each getitem reads one of its outputs (quantized with the chunk's point, if it has one)."""
    size = node.inputs[0].meta.shape[node.attrs["dim"]]
    if not isinstance(size, int):
        raise NndctError(f"{node.where()}: splitting a symbolic dimension is not exported to ONNX yet")
    if node.op is Op.CHUNK:
        step = -(-size // node.attrs["chunks"])
    else:
        step = node.attrs["split_size"]
    sizes = list(step) if isinstance(step, list) else [min(step, size - k) for k in range(0, size, step)]
    outs = [f"{node.name}_{k}" for k in range(len(sizes))]
    split = _int64(b, f"{node.name}_sizes", sizes)
    b.nodes.append(b.helper.make_node("Split", [b.inp(node), split], outs, name=node.name, axis=node.attrs["dim"]))
    b.value[node.name] = node.name  # read only through getitem
    b.pieces[node.name] = outs


@onnx_lowers(Op.GETITEM)
def _getitem(b: _Builder, node: Node) -> None:
    parent = node.inputs[0]
    if parent.name not in b.pieces:
        raise NndctError(f"{node.where()}: element of {parent.op.value} is not exported to ONNX yet")
    out = b.pieces[parent.name][node.attrs["index"]]
    if parent.name in b.plan.outputs:
        spec = b.output_spec(b.plan.tensor_point[parent.name])
        if spec is not None:
            out = b.point(out, spec, node.name)
    b.value[node.name] = out


@onnx_lowers(Op.INTERPOLATE)
def _resize(b: _Builder, node: Node) -> None:
    a = node.attrs
    if a["mode"] not in ("nearest", "bilinear") or len(node.meta.shape) != 4:
        raise NndctError(f"{node.where()}: {a['mode']} resampling is not exported to ONNX yet")
    (h, w), (oh, ow) = node.inputs[0].meta.shape[2:], node.meta.shape[2:]
    scales = b.init(f"{node.name}_scales", np.array([1.0, 1.0, oh / h, ow / w], dtype=np.float32))
    if a["mode"] == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        ctm = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    b.emit(node, b.add("Resize", [b.inp(node), "", scales], node.name, **attrs))


@onnx_lowers(Op.PAD)
def _pad(b: _Builder, node: Node) -> None:
    a = node.attrs
    rank = len(node.meta.shape)
    if a["mode"] != "constant":
        raise NndctError(f"{node.where()}: {a['mode']} padding is not exported to ONNX yet")
    begin, end = [0] * rank, [0] * rank
    for k in range(len(a["pad"]) // 2):  # torch lists the last dimension first
        begin[rank - 1 - k], end[rank - 1 - k] = a["pad"][2 * k], a["pad"][2 * k + 1]
    pads = _int64(b, f"{node.name}_pads", begin + end)
    value = b.init(f"{node.name}_value", np.array(float(a["value"] or 0.0), dtype=np.float32))
    b.emit(node, b.add("Pad", [b.inp(node), pads, value], node.name, mode="constant"))


CUSTOM_DOMAIN = "pytorch_nndct.custom"


@onnx_lowers(Op.CUSTOM)
def _custom(b: _Builder, node: Node) -> None:
    """A register_custom_op op: a node of its op_type in our custom domain, with its named attributes (the
    runtime needs the user's implementation, as on the DPU's CPU side)."""
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in node.attrs["op_attrs"].items()}
    inputs = [b.value[i.name] for i in node.inputs]
    b.nodes.append(
        b.helper.make_node(node.attrs["op_type"], inputs, [node.name], name=node.name, domain=CUSTOM_DOMAIN, **attrs)
    )
    b.emit(node, node.name)

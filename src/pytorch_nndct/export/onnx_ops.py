"""ONNX lowerings of our IR's norms, float activations, matrix products, transposed convs, average pooling
(the DPU's arithmetic, as quant/dpu.py simulates it) and layout ops beyond onnx_qdq's core set.

Float ops (layer / group norm, gelu) are written in float32 exactly as torch computes them, with no point of
their own: the plan's points around them are written by `OnnxBuilder.emit`. Symbolic sizes (`x.size(0)` and
arithmetic on it) become int64 scalars computed from the tensors' shapes when an op needs them (`int_value`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NndctError
from ..ir.graph import Node, Ref
from ..ir.ops import TRANSPOSED_CONV_OPS, Op
from ..quant.primitives import avgpool_factor
from .onnx_builder import OnnxBuilder, onnx_lowers

__all__ = ["dims", "int_value", "normalize", "reduce"]


# --------------------------------------------------------------------------- symbolic sizes
_INT_ARITH = {"operator.add": "Add", "operator.sub": "Sub", "operator.mul": "Mul", "operator.floordiv": "Div"}


def int_value(b: OnnxBuilder, node: Node) -> str:
    """The int64 scalar a SIZE or SCALAR node computes (written once, when first needed)."""
    if node.name in b.value:
        return b.value[node.name]
    if node.op is Op.SIZE:
        shape = b.add("Shape", [b.inp(node)], f"{node.name}_shape")
        index = b.init(f"{node.name}_dim", np.array(node.attrs["dim"], np.int64))
        out = b.add("Gather", [shape, index], node.name, axis=0)
    elif node.op is Op.SCALAR and node.attrs["fn"] in _INT_ARITH:
        a, c = (_scalar_operand(b, node, v, k) for k, v in enumerate(node.attrs["args"]))
        out = b.add(_INT_ARITH[node.attrs["fn"]], [a, c], node.name)  # sizes are >= 0: Div is floor division
    elif node.op is Op.SCALAR and node.attrs["fn"] in ("torch.sym_int", "operator.index"):
        out = _scalar_operand(b, node, node.attrs["args"][0], 0)
    else:
        what = node.attrs.get("fn", node.op.value)
        raise NndctError(f"{node.where()}: the size arithmetic {what} is not exported to ONNX yet")
    b.value[node.name] = out
    return out


def _scalar_operand(b: OnnxBuilder, node: Node, value: Any, k: int) -> str:
    if isinstance(value, Ref):
        return int_value(b, node.inputs[value.index])
    if isinstance(value, bool) or not isinstance(value, int):
        raise NndctError(f"{node.where()}: size arithmetic on {value!r} is not exported to ONNX yet")
    return b.init(f"{node.name}_arg{k}", np.array(value, np.int64))


def dims(b: OnnxBuilder, node: Node, values: list[Any], name: str) -> str:
    """A 1-D int64 tensor of ints and Refs to symbolic sizes (an initializer when all are ints)."""
    if all(isinstance(v, int) for v in values):
        return b.ints(name, list(values))
    axes = b.ints("axes_0", [0])
    parts = []
    for k, v in enumerate(values):
        if isinstance(v, Ref):
            parts.append(b.add("Unsqueeze", [int_value(b, node.inputs[v.index]), axes], f"{name}_{k}"))
        else:
            parts.append(b.ints(f"{name}_{k}", [v]))
    return b.add("Concat", parts, name, axis=0)


# --------------------------------------------------------------------------- shared pieces
_AXES_INPUT_FROM = {"ReduceSum": 13}  # opset where `axes` became an input; 18 for the other reductions


def reduce(b: OnnxBuilder, op_type: str, x: str, axes: list[int] | None, keep: bool, name: str) -> str:
    """A Reduce* over `axes` (None: all), with axes as an attribute or an input as the opset wants."""
    if axes is None:
        return b.add(op_type, [x], name, keepdims=int(keep))
    if b.opset >= _AXES_INPUT_FROM.get(op_type, 18):
        return b.add(op_type, [x, b.ints(f"{name}_axes", axes)], name, keepdims=int(keep))
    return b.add(op_type, [x], name, axes=axes, keepdims=int(keep))


def normalize(b: OnnxBuilder, x: str, axes: list[int], eps: float, name: str) -> str:
    """(x - mean) / sqrt(var + eps) over `axes`, the biased variance, as torch's norms compute it."""
    d = b.add("Sub", [x, reduce(b, "ReduceMean", x, axes, True, f"{name}_mean")], f"{name}_centered")
    var = reduce(b, "ReduceMean", b.add("Mul", [d, d], f"{name}_sq"), axes, True, f"{name}_var")
    eps_name = b.init(f"{name}_eps", np.array(eps, np.float32))
    std = b.add("Sqrt", [b.add("Add", [var, eps_name], f"{name}_var_eps")], f"{name}_std")
    return b.add("Div", [d, std], f"{name}_normed")


def _affine(b: OnnxBuilder, node: Node, y: str, shape: list[int], name: str) -> str:
    """y * weight + bias, each reshaped to `shape` for broadcasting (either may be absent)."""
    for role, op_type in (("weight", "Mul"), ("bias", "Add")):
        if role in node.params:
            p = b.weight(node, role)
            if shape != list(b.graph.params[node.params[role]].shape):
                p = b.add("Reshape", [p, b.ints(f"{name}_{role}_shape", shape)], f"{name}_{role}_r")
            y = b.add(op_type, [y, p], f"{name}_{'gamma' if role == 'weight' else 'beta'}")  # not `_scale`: a Q/DQ's
    return y


# --------------------------------------------------------------------------- norms
@onnx_lowers(Op.BATCH_NORM)
def _batch_norm(b: OnnxBuilder, node: Node) -> None:
    c = b.graph.params[node.params["running_mean"]].numel()
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    scale = b.weight(node, "weight") if "weight" in node.params else b.init(f"{node.name}_ones", ones)
    shift = b.weight(node, "bias") if "bias" in node.params else b.init(f"{node.name}_zeros", zeros)
    inputs = [b.inp(node), scale, shift, b.weight(node, "running_mean"), b.weight(node, "running_var")]
    b.emit(node, b.add("BatchNormalization", inputs, node.name, epsilon=float(node.attrs["eps"])))


@onnx_lowers(Op.LAYER_NORM)
def _layer_norm(b: OnnxBuilder, node: Node) -> None:
    shape = list(node.attrs["normalized_shape"])
    eps = float(node.attrs["eps"])
    if b.opset >= 17:  # LayerNormalization
        scale = b.weight(node, "weight") if "weight" in node.params else b.init(
            f"{node.name}_ones", np.ones(shape, np.float32))  # fmt: skip
        inputs = [b.inp(node), scale] + ([b.weight(node, "bias")] if "bias" in node.params else [])
        b.emit(node, b.add("LayerNormalization", inputs, node.name, axis=-len(shape), epsilon=eps))
        return
    axes = list(range(-len(shape), 0))
    b.emit(node, _affine(b, node, normalize(b, b.inp(node), axes, eps, node.name), shape, node.name))


@onnx_lowers(Op.GROUP_NORM)
def _group_norm(b: OnnxBuilder, node: Node) -> None:
    x, rank = b.inp(node), len(node.meta.shape)
    grouped = b.add("Reshape", [x, b.ints(f"{node.name}_grouped", [0, node.attrs["num_groups"], -1])],
                    f"{node.name}_groups")  # fmt: skip
    normed = normalize(b, grouped, [2], float(node.attrs["eps"]), node.name)
    y = b.add("Reshape", [normed, b.add("Shape", [x], f"{node.name}_shape")], f"{node.name}_ungrouped")
    b.emit(node, _affine(b, node, y, [-1] + [1] * (rank - 2), node.name))


# --------------------------------------------------------------------------- activations, arithmetic
@onnx_lowers(Op.GELU)
def _gelu(b: OnnxBuilder, node: Node) -> None:
    x, n = b.inp(node), node.name
    half, one = b.init("f32_0.5", np.array(0.5, np.float32)), b.init("f32_1", np.array(1.0, np.float32))
    if node.attrs.get("approximate", "none") == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.add("Mul", [b.add("Mul", [x, x], f"{n}_x2"), x], f"{n}_x3")
        k = b.init(f"{n}_k", np.array(0.044715, np.float32))
        inner = b.add("Add", [x, b.add("Mul", [cube, k], f"{n}_kx3")], f"{n}_inner")
        c = b.init(f"{n}_c", np.array(math.sqrt(2.0 / math.pi), np.float32))
        t = b.add("Tanh", [b.add("Mul", [inner, c], f"{n}_scaled")], f"{n}_tanh")
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        r = b.init("f32_1/sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
        t = b.add("Erf", [b.add("Mul", [x, r], f"{n}_scaled")], f"{n}_erf")
    gate = b.add("Mul", [b.add("Add", [t, one], f"{n}_1p"), half], f"{n}_gate")
    b.emit(node, b.add("Mul", [x, gate], n))


@onnx_lowers(Op.MATMUL)
def _matmul(b: OnnxBuilder, node: Node) -> None:
    b.emit(node, b.add("MatMul", [b.inp(node, 0), b.inp(node, 1)], node.name))


@onnx_lowers(Op.DROPOUT, Op.IDENTITY)
def _identity(b: OnnxBuilder, node: Node) -> None:
    b.emit(node, b.add("Identity", [b.inp(node)], node.name))


@onnx_lowers(*TRANSPOSED_CONV_OPS)
def _conv_transpose(b: OnnxBuilder, node: Node) -> None:
    a = node.attrs
    if isinstance(a["padding"], str):
        raise NndctError(f"{node.where()}: string padding {a['padding']!r} is not exported to ONNX yet")
    inputs = [b.inp(node), b.weight(node, "weight")]
    if bias := b.bias(node, node.inputs[0]):
        inputs.append(bias)
    out = b.add("ConvTranspose", inputs, node.name, strides=list(a["stride"]), pads=list(a["padding"]) * 2,
                dilations=list(a["dilation"]), group=a["groups"], output_padding=list(a["output_padding"]))  # fmt: skip
    b.emit(node, out)


# --------------------------------------------------------------------------- average pooling
def _dpu_avg(b: OnnxBuilder, node: Node, pooled: str, k: int) -> None:
    """The DPU's average, window sum x M / 2^S (an average times k x M / 2^S); the plain average where the
    node runs in float (see OnnxBuilder.dpu_math)."""
    if not b.dpu_math(node):
        b.emit(node, b.add("Identity", [pooled], node.name))
        return
    m, s = avgpool_factor(k)
    factor = b.init(f"{node.name}_factor", np.array(k * m / 2**s, np.float32))
    b.emit(node, b.add("Mul", [pooled, factor], node.name))


@onnx_lowers(Op.AVG_POOL2D)
def _avgpool(b: OnnxBuilder, node: Node) -> None:
    a = node.attrs
    if a["divisor_override"] is not None:
        raise NndctError(f"{node.where()}: average pooling with divisor_override is not exported to ONNX")
    pooled = b.add("AveragePool", [b.inp(node)], f"{node.name}_avg", kernel_shape=list(a["kernel_size"]),
                   strides=list(a["stride"]), pads=list(a["padding"]) * 2, ceil_mode=int(a["ceil_mode"]),
                   count_include_pad=int(a["count_include_pad"]))  # fmt: skip
    if not a["count_include_pad"] and any(a["padding"]):  # the DPU form does not apply (quant/dpu.py)
        b.emit(node, b.add("Identity", [pooled], node.name))
        return
    _dpu_avg(b, node, pooled, a["kernel_size"][0] * a["kernel_size"][1])


@onnx_lowers(Op.ADAPTIVE_AVG_POOL2D)
def _adaptive(b: OnnxBuilder, node: Node) -> None:
    """As quant/dpu.py computes it: global pooling, or an average pooling of kernel = stride = input / output
    where that divides; otherwise torch's adaptive windows (start floor(i h / oh), end ceil((i + 1) h / oh)),
    averaged along each axis in turn."""
    h, w = node.inputs[0].meta.shape[2:]
    oh, ow = node.meta.shape[2:]
    if not all(isinstance(v, int) for v in (h, w, oh, ow)):
        raise NndctError(f"{node.where()}: adaptive average pooling of a symbolic size is not exported to ONNX")
    if (oh, ow) == (1, 1):
        _dpu_avg(b, node, b.add("GlobalAveragePool", [b.inp(node)], f"{node.name}_avg"), h * w)
    elif h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        pooled = b.add("AveragePool", [b.inp(node)], f"{node.name}_avg", kernel_shape=k, strides=k)
        _dpu_avg(b, node, pooled, k[0] * k[1])
    else:
        y = _adaptive_axis(b, b.inp(node), 2, h, oh, f"{node.name}_h")
        b.emit(node, b.add("Identity", [_adaptive_axis(b, y, 3, w, ow, f"{node.name}_w")], node.name))


def _adaptive_axis(b: OnnxBuilder, x: str, axis: int, size: int, out: int, name: str) -> str:
    if size == out:
        return x
    cells = []
    for i in range(out):
        lo, hi = (i * size) // out, -(-(i + 1) * size // out)
        piece = b.add("Slice", [x, b.ints(f"{name}{i}_lo", [lo]), b.ints(f"{name}{i}_hi", [hi]),
                                b.ints(f"axis_{axis}", [axis])], f"{name}{i}_slice")  # fmt: skip
        cells.append(reduce(b, "ReduceMean", piece, [axis], True, f"{name}{i}"))
    return b.add("Concat", cells, name, axis=axis)


# --------------------------------------------------------------------------- layout
@onnx_lowers(Op.EXPAND)
def _expand(b: OnnxBuilder, node: Node) -> None:
    sizes = [1 if isinstance(v, int) and v == -1 else v for v in node.attrs["size"]]  # -1 keeps: broadcast 1
    b.emit(node, b.add("Expand", [b.inp(node), dims(b, node, sizes, f"{node.name}_size")], node.name))


@onnx_lowers(Op.SELECT)
def _select(b: OnnxBuilder, node: Node) -> None:
    index = node.attrs["index"]
    if not isinstance(index, int):
        raise NndctError(f"{node.where()}: select at a symbolic index is not exported to ONNX yet")
    idx = b.init(f"{node.name}_index", np.array(index, np.int64))
    b.emit(node, b.add("Gather", [b.inp(node), idx], node.name, axis=node.attrs["dim"]))


@onnx_lowers(Op.PIXEL_SHUFFLE)
def _pixel_shuffle(b: OnnxBuilder, node: Node) -> None:
    if len(node.meta.shape) != 4:
        raise NndctError(f"{node.where()}: pixel_shuffle of a rank-{len(node.meta.shape)} tensor is not exported")
    out = b.add("DepthToSpace", [b.inp(node)], node.name, blocksize=node.attrs["upscale_factor"], mode="CRD")
    b.emit(node, out)

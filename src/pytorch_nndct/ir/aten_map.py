"""The trace mapping table: which ATen operators become which `Op`, with which attributes.

Each converter takes a `Call` (the operator's arguments bound to their schema names, defaults filled in)
and returns a `Spec`, or None when this particular call cannot be expressed by our op (for example a conv
whose weight is computed in forward rather than held as a parameter); the front end then keeps the call
as a generic `Op.ATEN` node, which runs the original operator. Both front ends (torch.export and the
concrete fallback) use this one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .graph import Node
from .ops import Op

__all__ = ["CONVERTERS", "Call", "Param", "Spec", "TorchConst", "converter_for", "converts"]


@dataclass(frozen=True)
class Param:
    """A model parameter, buffer or constant tensor, by its state-dict name."""

    name: str


@dataclass(frozen=True)
class TorchConst:
    """A torch constant that is not a number (dtype, layout, memory format), by its Python expression."""

    expr: str


@dataclass
class Call:
    """One operator call: its qualified name and arguments bound by name."""

    target: str
    args: dict[str, Any]
    returns_tuple: bool = False

    def is_param(self, name: str) -> bool:
        return isinstance(self.args.get(name), Param)


@dataclass
class Spec:
    """What a converter produces: an op, its tensor inputs (in order), attributes and parameter roles."""

    op: Op
    inputs: list[Any] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    first_of_tuple: bool = False  # the ATen op returns a tuple whose element 0 is this op's output


Converter = Callable[[Call], Spec | None]
CONVERTERS: dict[str, Converter] = {}
PRODUCES: set[Op] = set()  # every op some converter can produce

# Ops no converter produces, and where they come from instead.
NOT_FROM_ATEN: dict[Op, str] = {
    Op.INPUT: "made from the model's tensor inputs",
    Op.CONST: "made for a parameter or buffer used outside a conv/linear/norm",
    Op.GETITEM: "made for an element of a tuple-returning op",
    Op.SIZE: "made from aten.sym_size (a symbolic dimension such as the batch size)",
    Op.SCALAR: "made from Python arithmetic on symbolic sizes",
    Op.CHANNEL_SCALE: "made by the fold-BN pass from a batch-norm it cannot fold",
    Op.ATEN: "made for every ATen operator no converter takes",
    Op.CUSTOM: "made for the ops registered with register_custom_op (see ir/custom.py: custom_spec)",
}


def converts(*targets: str, produces: Op | tuple[Op, ...]) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for t in targets:
            CONVERTERS[t] = fn
        PRODUCES.update(produces if isinstance(produces, tuple) else (produces,))
        return fn

    return register


def _params(call: Call, **roles: str) -> dict[str, str] | None:
    """Map roles to parameter names; None if a required one is not a parameter (computed in forward)."""
    out = {}
    for role, argname in roles.items():
        value = call.args.get(argname)
        if value is None:
            continue
        if not isinstance(value, Param):
            return None
        out[role] = value.name
    return out


def _as_list(value: Any, n: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * n


# --------------------------------------------------------------------------- weighted ops
_CONV = {1: Op.CONV1D, 2: Op.CONV2D, 3: Op.CONV3D}
_TCONV = {1: Op.CONV_TRANSPOSE1D, 2: Op.CONV_TRANSPOSE2D, 3: Op.CONV_TRANSPOSE3D}


def _conv_spec(call: Call, nd: int, transposed: bool) -> Spec | None:
    params = _params(call, weight="weight", bias="bias")
    if params is None or "weight" not in params:
        return None
    a = call.args
    padding = a["padding"] if isinstance(a["padding"], str) else _as_list(a["padding"], nd)
    attrs = {
        "stride": _as_list(a["stride"], nd),
        "padding": padding,
        "dilation": _as_list(a["dilation"], nd),
        "groups": a["groups"],
    }
    if transposed:
        attrs["output_padding"] = _as_list(a["output_padding"], nd)
    return Spec((_TCONV if transposed else _CONV)[nd], [a["input"]], attrs, params)


@converts("aten.conv1d.default", "aten.conv1d.padding", produces=Op.CONV1D)
def _conv1d(call: Call) -> Spec | None:
    return _conv_spec(call, 1, False)


@converts("aten.conv2d.default", "aten.conv2d.padding", produces=Op.CONV2D)
def _conv2d(call: Call) -> Spec | None:
    return _conv_spec(call, 2, False)


@converts("aten.conv3d.default", "aten.conv3d.padding", produces=Op.CONV3D)
def _conv3d(call: Call) -> Spec | None:
    return _conv_spec(call, 3, False)


@converts("aten.conv_transpose1d.default", produces=Op.CONV_TRANSPOSE1D)
def _tconv1d(call: Call) -> Spec | None:
    return _conv_spec(call, 1, True)


@converts("aten.conv_transpose2d.input", produces=Op.CONV_TRANSPOSE2D)
def _tconv2d(call: Call) -> Spec | None:
    return _conv_spec(call, 2, True)


@converts("aten.conv_transpose3d.input", produces=Op.CONV_TRANSPOSE3D)
def _tconv3d(call: Call) -> Spec | None:
    return _conv_spec(call, 3, True)


@converts("aten.convolution.default", produces=(*_CONV.values(), *_TCONV.values()))
def _convolution(call: Call) -> Spec | None:
    nd = len(call.args["stride"])
    if nd not in _CONV:
        return None
    return _conv_spec(call, nd, bool(call.args["transposed"]))


@converts("aten.linear.default", produces=Op.LINEAR)
def _linear(call: Call) -> Spec | None:
    params = _params(call, weight="weight", bias="bias")
    if params is None or "weight" not in params:
        return None
    return Spec(Op.LINEAR, [call.args["input"]], {}, params)


def _bn(call: Call, first_of_tuple: bool) -> Spec | None:
    if call.args.get("training"):
        return None
    params = _params(call, weight="weight", bias="bias", running_mean="running_mean", running_var="running_var")
    if params is None or "running_mean" not in params or "running_var" not in params:
        return None
    return Spec(Op.BATCH_NORM, [call.args["input"]], {"eps": call.args["eps"]}, params, first_of_tuple)


@converts("aten.batch_norm.default", produces=Op.BATCH_NORM)
def _batch_norm(call: Call) -> Spec | None:
    return _bn(call, False)


@converts("aten._native_batch_norm_legit_no_training.default", produces=Op.BATCH_NORM)
def _native_bn(call: Call) -> Spec | None:
    return _bn(call, True)


@converts("aten.embedding.default", produces=Op.EMBEDDING)
def _embedding(call: Call) -> Spec | None:
    params = _params(call, weight="weight")
    if params is None or "weight" not in params:
        return None
    return Spec(Op.EMBEDDING, [call.args["indices"]], {"padding_idx": call.args.get("padding_idx", -1)}, params)


@converts("aten.layer_norm.default", produces=Op.LAYER_NORM)
def _layer_norm(call: Call) -> Spec | None:
    params = _params(call, weight="weight", bias="bias")
    if params is None:
        return None
    attrs = {"normalized_shape": list(call.args["normalized_shape"]), "eps": call.args["eps"]}
    return Spec(Op.LAYER_NORM, [call.args["input"]], attrs, params)


def _group_norm_spec(call: Call, groups_arg: str, first_of_tuple: bool) -> Spec | None:
    params = _params(call, weight="weight", bias="bias")
    if params is None:
        return None
    attrs = {"num_groups": call.args[groups_arg], "eps": call.args["eps"]}
    return Spec(Op.GROUP_NORM, [call.args["input"]], attrs, params, first_of_tuple)


@converts("aten.group_norm.default", produces=Op.GROUP_NORM)
def _group_norm(call: Call) -> Spec | None:
    return _group_norm_spec(call, "num_groups", False)


# --------------------------------------------------------------------------- element-wise
def _unary(op: Op, *targets: str) -> None:
    converts(*targets, produces=op)(lambda call: Spec(op, [call.args["self"]]))


_unary(Op.RELU, "aten.relu.default", "aten.relu_.default")
_unary(Op.RELU6, "aten.relu6.default", "aten.relu6_.default")
_unary(Op.SIGMOID, "aten.sigmoid.default", "aten.sigmoid_.default")
_unary(Op.TANH, "aten.tanh.default", "aten.tanh_.default")
_unary(Op.SILU, "aten.silu.default", "aten.silu_.default")
_unary(Op.HARDSIGMOID, "aten.hardsigmoid.default", "aten.hardsigmoid_.default")
_unary(Op.HARDSWISH, "aten.hardswish.default", "aten.hardswish_.default")
_unary(Op.CONTIGUOUS, "aten.contiguous.default")
_unary(Op.IDENTITY, "aten.clone.default", "aten.alias.default", "aten.detach.default")


@converts("aten.hardtanh.default", "aten.hardtanh_.default", produces=(Op.RELU6, Op.HARDTANH))
def _hardtanh(call: Call) -> Spec:
    lo, hi = call.args["min_val"], call.args["max_val"]
    if lo == 0 and hi == 6:
        return Spec(Op.RELU6, [call.args["self"]])
    return Spec(Op.HARDTANH, [call.args["self"]], {"min_val": lo, "max_val": hi})


@converts("aten.leaky_relu.default", "aten.leaky_relu_.default", produces=Op.LEAKY_RELU)
def _leaky_relu(call: Call) -> Spec:
    return Spec(Op.LEAKY_RELU, [call.args["self"]], {"negative_slope": call.args["negative_slope"]})


@converts("aten.gelu.default", "aten.gelu_.default", produces=Op.GELU)
def _gelu(call: Call) -> Spec:
    return Spec(Op.GELU, [call.args["self"]], {"approximate": call.args["approximate"]})


@converts("aten.softmax.int", "aten._softmax.default", produces=Op.SOFTMAX)
def _softmax(call: Call) -> Spec | None:
    if call.args.get("dtype") is not None or call.args.get("half_to_float"):
        return None
    return Spec(Op.SOFTMAX, [call.args["self"]], {"dim": call.args["dim"]})


def _binary(op: Op, call: Call, **extra: Any) -> Spec | None:
    a, b = call.args["self"], call.args["other"]
    if not _is_tensor_value(a):
        return None
    if _is_tensor_value(b):
        return Spec(op, [a, b], {"other": None, **extra})
    return Spec(op, [a], {"other": b, **extra})


def _is_tensor_value(value: Any) -> bool:
    if isinstance(value, Param):
        return True
    return isinstance(value, Node) and value.op not in (Op.SIZE, Op.SCALAR)


@converts("aten.add.Tensor", "aten.add_.Tensor", "aten.add.Scalar", "aten.add_.Scalar", produces=Op.ADD)
def _add(call: Call) -> Spec | None:
    return _binary(Op.ADD, call, alpha=call.args.get("alpha", 1))


@converts("aten.sub.Tensor", "aten.sub_.Tensor", "aten.sub.Scalar", "aten.sub_.Scalar", produces=Op.SUB)
def _sub(call: Call) -> Spec | None:
    return _binary(Op.SUB, call, alpha=call.args.get("alpha", 1))


@converts("aten.mul.Tensor", "aten.mul_.Tensor", "aten.mul.Scalar", "aten.mul_.Scalar", produces=Op.MUL)
def _mul(call: Call) -> Spec | None:
    return _binary(Op.MUL, call)


@converts(
    "aten.div.Tensor",
    "aten.div_.Tensor",
    "aten.div.Scalar",
    "aten.div_.Scalar",
    "aten.div.Tensor_mode",
    produces=Op.DIV,
)
def _div(call: Call) -> Spec | None:
    return _binary(Op.DIV, call, rounding_mode=call.args.get("rounding_mode"))


@converts("aten.matmul.default", produces=Op.MATMUL)
def _matmul(call: Call) -> Spec | None:
    return Spec(Op.MATMUL, [call.args["self"], call.args["other"]])


@converts("aten.mean.dim", "aten.mean.default", produces=Op.MEAN)
def _mean(call: Call) -> Spec | None:
    if call.args.get("dtype") is not None:
        return None
    dims = call.args.get("dim")
    return Spec(
        Op.MEAN,
        [call.args["self"]],
        {"dim": list(dims) if dims else dims, "keepdim": bool(call.args.get("keepdim"))},
    )


# --------------------------------------------------------------------------- pooling, resampling
def _pool_window(a: dict[str, Any]) -> dict[str, Any]:
    """kernel_size, stride (defaults to the kernel) and padding of a 2-D pooling call."""
    k = _as_list(a["kernel_size"], 2)
    return {
        "kernel_size": k,
        "stride": _as_list(a["stride"], 2) if a["stride"] else k,
        "padding": _as_list(a["padding"], 2),
    }


@converts("aten.max_pool2d.default", produces=Op.MAX_POOL2D)
def _max_pool2d(call: Call) -> Spec:
    a = call.args
    attrs = {**_pool_window(a), "dilation": _as_list(a["dilation"], 2), "ceil_mode": a["ceil_mode"]}
    return Spec(Op.MAX_POOL2D, [a["self"]], attrs)


@converts("aten.avg_pool2d.default", produces=Op.AVG_POOL2D)
def _avg_pool2d(call: Call) -> Spec:
    a = call.args
    keys = ("ceil_mode", "count_include_pad", "divisor_override")
    return Spec(Op.AVG_POOL2D, [a["self"]], {**_pool_window(a), **{k: a[k] for k in keys}})


@converts("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default", produces=Op.ADAPTIVE_AVG_POOL2D)
def _adaptive_avg_pool2d(call: Call) -> Spec:
    return Spec(Op.ADAPTIVE_AVG_POOL2D, [call.args["self"]], {"output_size": list(call.args["output_size"])})


def _interp(call: Call, mode: str) -> Spec | None:
    a = call.args
    size, scale = a.get("output_size"), a.get("scale_factors")
    if a.get("scales_h") is not None or a.get("scales_w") is not None:
        return None
    attrs = {
        "size": list(size) if size is not None else None,
        "scale_factor": list(scale) if scale is not None else None,
        "mode": mode,
        "align_corners": a.get("align_corners"),
    }
    return Spec(Op.INTERPOLATE, [a["input"]], attrs)


@converts("aten.upsample_nearest2d.vec", produces=Op.INTERPOLATE)
def _up_nearest(call: Call) -> Spec | None:
    return _interp(call, "nearest")


@converts("aten.upsample_bilinear2d.vec", produces=Op.INTERPOLATE)
def _up_bilinear(call: Call) -> Spec | None:
    return _interp(call, "bilinear")


@converts("aten.pad.default", produces=Op.PAD)
def _pad(call: Call) -> Spec:
    a = call.args
    attrs = {"pad": list(a["pad"]), "mode": a["mode"], "value": a["value"]}
    return Spec(Op.PAD, [a["self"]], attrs)


@converts("aten.constant_pad_nd.default", produces=Op.PAD)
def _constant_pad(call: Call) -> Spec:
    a = call.args
    return Spec(Op.PAD, [a["self"]], {"pad": list(a["pad"]), "mode": "constant", "value": a["value"]})


# --------------------------------------------------------------------------- layout
@converts("aten.cat.default", "aten.concat.default", produces=Op.CAT)
def _cat(call: Call) -> Spec:
    return Spec(Op.CAT, list(call.args["tensors"]), {"dim": call.args["dim"]})


@converts("aten.flatten.using_ints", produces=Op.FLATTEN)
def _flatten(call: Call) -> Spec:
    a = call.args
    return Spec(Op.FLATTEN, [a["self"]], {"start_dim": a["start_dim"], "end_dim": a["end_dim"]})


@converts("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", produces=Op.RESHAPE)
def _reshape(call: Call) -> Spec:
    return Spec(Op.RESHAPE, [call.args["self"]], {"shape": list(call.args.get("size", call.args.get("shape")))})


@converts("aten.permute.default", produces=Op.PERMUTE)
def _permute(call: Call) -> Spec:
    return Spec(Op.PERMUTE, [call.args["self"]], {"dims": list(call.args["dims"])})


@converts("aten.transpose.int", produces=Op.TRANSPOSE)
def _transpose(call: Call) -> Spec:
    a = call.args
    return Spec(Op.TRANSPOSE, [a["self"]], {"dim0": a["dim0"], "dim1": a["dim1"]})


@converts("aten.unsqueeze.default", produces=Op.UNSQUEEZE)
def _unsqueeze(call: Call) -> Spec:
    return Spec(Op.UNSQUEEZE, [call.args["self"]], {"dim": call.args["dim"]})


@converts("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", produces=Op.SQUEEZE)
def _squeeze(call: Call) -> Spec:
    dim = call.args.get("dim")
    return Spec(Op.SQUEEZE, [call.args["self"]], {"dim": list(dim) if isinstance(dim, list | tuple) else dim})


@converts("aten.slice.Tensor", produces=Op.SLICE)
def _slice(call: Call) -> Spec:
    a = call.args
    attrs = {"dim": a["dim"], "start": a["start"], "end": a["end"], "step": a["step"]}
    return Spec(Op.SLICE, [a["self"]], attrs)


@converts("aten.select.int", produces=Op.SELECT)
def _select(call: Call) -> Spec:
    return Spec(Op.SELECT, [call.args["self"]], {"dim": call.args["dim"], "index": call.args["index"]})


@converts("aten.chunk.default", produces=Op.CHUNK)
def _chunk(call: Call) -> Spec:
    return Spec(Op.CHUNK, [call.args["self"]], {"chunks": call.args["chunks"], "dim": call.args["dim"]})


@converts("aten.split.Tensor", produces=Op.SPLIT)
def _split(call: Call) -> Spec:
    return Spec(Op.SPLIT, [call.args["self"]], {"split_size": call.args["split_size"], "dim": call.args["dim"]})


@converts("aten.expand.default", produces=Op.EXPAND)
def _expand(call: Call) -> Spec | None:
    if call.args.get("implicit"):
        return None
    return Spec(Op.EXPAND, [call.args["self"]], {"size": list(call.args["size"])})


@converts("aten.pixel_shuffle.default", produces=Op.PIXEL_SHUFFLE)
def _pixel_shuffle(call: Call) -> Spec:
    return Spec(Op.PIXEL_SHUFFLE, [call.args["self"]], {"upscale_factor": call.args["upscale_factor"]})


@converts(
    "aten.dropout.default",
    "aten.dropout_.default",
    "aten.feature_dropout.default",
    "aten.feature_dropout_.default",
    "aten.alpha_dropout.default",
    produces=Op.DROPOUT,
)
def _dropout(call: Call) -> Spec | None:
    if call.args.get("train"):
        return None
    return Spec(Op.DROPOUT, [call.args.get("input", call.args.get("self"))])


@converts("aten.addmm.default", produces=Op.LINEAR)
def _addmm(call: Call) -> Spec | None:
    """`addmm(b, x, t(W))` is how F.linear reaches the dispatcher; make it a LINEAR again."""
    a = call.args
    mat2 = a["mat2"]
    if a["beta"] != 1 or a["alpha"] != 1 or not isinstance(a["self"], Param):
        return None
    if not (isinstance(mat2, Node) and mat2.op is Op.ATEN and mat2.attrs["target"] == "aten.t.default"):
        return None
    weight = mat2.inputs[0]
    if weight.op is not Op.CONST:
        return None
    return Spec(Op.LINEAR, [a["mat1"]], {}, {"weight": weight.params["value"], "bias": a["self"].name})


# --------------------------------------------------------------------------- dispatcher-level forms
# The concrete fallback tracer sees ops after autograd decomposition; these map them back.
@converts("aten.native_batch_norm.default", produces=Op.BATCH_NORM)
def _native_batch_norm(call: Call) -> Spec | None:
    return _bn(call, True)


@converts("aten.native_layer_norm.default", produces=Op.LAYER_NORM)
def _native_layer_norm(call: Call) -> Spec | None:
    spec = _layer_norm(call)
    if spec is not None:
        spec.first_of_tuple = True
    return spec


@converts("aten.native_group_norm.default", produces=Op.GROUP_NORM)
def _native_group_norm(call: Call) -> Spec | None:
    return _group_norm_spec(call, "group", True)


@converts("aten.max_pool2d_with_indices.default", produces=Op.MAX_POOL2D)
def _max_pool2d_with_indices(call: Call) -> Spec:
    spec = _max_pool2d(call)
    spec.first_of_tuple = True
    return spec


def _interp_default(call: Call, mode: str) -> Spec:
    a = call.args
    sh, sw = a.get("scales_h"), a.get("scales_w")
    scaled = sh is not None and sw is not None
    attrs = {
        "size": None if scaled else list(a["output_size"]),
        "scale_factor": [sh, sw] if scaled else None,
        "mode": mode,
        "align_corners": a.get("align_corners"),
    }
    return Spec(Op.INTERPOLATE, [a["self"]], attrs)


@converts("aten.upsample_nearest2d.default", produces=Op.INTERPOLATE)
def _up_nearest_default(call: Call) -> Spec:
    return _interp_default(call, "nearest")


@converts("aten.upsample_bilinear2d.default", produces=Op.INTERPOLATE)
def _up_bilinear_default(call: Call) -> Spec:
    return _interp_default(call, "bilinear")


# --------------------------------------------------------------------------- user-registered ops
def _custom(call: Call) -> Spec | None:
    """`nndct_custom.<op_type>.<overload>` (ir/custom.py): the last len(attrs_list) arguments are attributes."""
    from .custom import custom_op_def

    op_type = call.target.split(".")[1]
    op = custom_op_def(op_type)
    if op is None:
        return None
    args = [call.args[f"a{k}"] for k in range(len(call.args))]
    named = dict(zip(op.attrs_list, args[len(args) - len(op.attrs_list) :])) if op.attrs_list else {}
    attrs = {"op_type": op_type, "target": call.target, "args": args, "kwargs": {}, "op_attrs": named}
    return Spec(Op.CUSTOM, attrs=attrs)


def converter_for(target: str) -> Converter | None:
    """The converter of an operator, by its qualified name (user-registered custom ops included)."""
    from .custom import NAMESPACE

    if target.startswith(NAMESPACE + "."):
        return _custom
    return CONVERTERS.get(target)

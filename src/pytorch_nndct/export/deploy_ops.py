"""More XIR lowerings (XIR_OPS.md 5-7): ops written with XIR's built-in op instead of an `nndct_*` custom op.

Element-wise ops keep their input's layout; normalizations read NHWC feature maps (XIR's channel is the last
dimension); float reductions (sum, product) read the logical layout, so they add in the simulation's order.
ATen ops the front end keeps as `Op.ATEN` are lowered by target through `ATEN_LOWERINGS`. Float ops on the host
keep their float semantics: `lw.emit` adds a fix only where the plan has a point.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..ir.graph import Node, Ref, TensorMeta
from ..ir.ops import Op, reduced_axes
from .deploy import _NHWC, XOp, _elementwise, _Lowering, _reshape, lowers, lowers_aten

__all__: list[str] = []


def _arg(node: Node, k: int, name: str, default: Any = None) -> Any:
    """Argument `k` (schema name `name`) of an ATen node; tensor arguments come back as their input nodes."""
    args, kwargs = node.attrs["args"], node.attrs["kwargs"]
    value = args[k] if k < len(args) else kwargs.get(name, default)
    if isinstance(value, list | tuple):
        return [node.inputs[v.index] if isinstance(v, Ref) else v for v in value]
    return node.inputs[value.index] if isinstance(value, Ref) else value


def _mark(lw: _Lowering, node: Node, nhwc: bool) -> bool:
    if nhwc:
        lw.nhwc.add(node.name)
    return nhwc


def _unary(kind: str, **attrs: tuple[str, Any]) -> Any:
    return lambda lw, node: _elementwise(lw, node, kind, attrs)


for _target, _kind in {
    "aten.exp.default": "exp",
    "aten.neg.default": "neg",
    "aten.selu.default": "selu",
    "aten.mish.default": "mish",
}.items():
    lowers_aten(_target)(_unary(_kind))


@lowers_aten("aten.elu.default", "aten.celu.default")
def _elu(lw: _Lowering, node: Node) -> None:
    alpha = float(_arg(node, 1, "alpha", 1.0))
    scaled = _arg(node, 2, "scale", 1) != 1 or _arg(node, 3, "input_scale", 1) != 1
    if node.attrs["target"] == "aten.elu.default" and scaled:
        lw.custom(node, "elu with scale or input_scale other than 1: XIR's elu has alpha only")
        return
    kind = "elu" if node.attrs["target"] == "aten.elu.default" else "celu"
    _unary(kind, alpha=("float", alpha))(lw, node)


@lowers_aten("aten.prelu.default", "aten._prelu_kernel.default")
def _prelu(lw: _Lowering, node: Node) -> None:
    src, weight = node.inputs[0], _arg(node, 1, "weight")
    rank = len(lw.logical_shape(src))
    if rank not in (2, 4) and math.prod(lw.logical_shape(weight)) != 1:
        lw.custom(node, f"prelu of a {rank}-D tensor with per-channel slopes: XIR's channel is the last dimension")
        return
    nhwc = _mark(lw, node, rank == 4)
    args = {"input": [lw.value_as(src, nhwc)], "weight": [lw.value[weight.name]]}
    lw.emit(node, XOp(lw.op_name(node), "prelu", lw.phys_shape(node), {}, args), nhwc)


def _binary(kind: str) -> Any:
    def lower(lw: _Lowering, node: Node) -> None:
        ranks = {len(lw.logical_shape(i)) for i in node.inputs}
        nhwc = _mark(lw, node, lw.follows_nhwc(node) and ranks == {4})
        op = XOp(lw.op_name(node), kind, lw.phys_shape(node), {}, {"input": lw.inputs(node, nhwc)})
        lw.emit(node, op, nhwc)

    return lower


lowers_aten("aten.maximum.default", "aten.max.other")(_binary("max"))
lowers_aten("aten.minimum.default", "aten.min.other")(_binary("min"))


def _clamp(lw: _Lowering, node: Node, low: float | None, high: float | None) -> None:
    """clamp(x, low, high) as `max` with a const low bound, then `min` with a const high bound."""
    steps = [(kind, bound) for kind, bound in (("max", low), ("min", high)) if bound is not None]
    if not steps:
        _identity(lw, node)
        return
    nhwc = _mark(lw, node, lw.follows_nhwc(node))
    value, shape = lw.value_as(node.inputs[0], nhwc), lw.phys_shape(node)
    for k, (kind, bound) in enumerate(steps):
        bound_op = lw.const(lw.op_name(node, f"_{kind}_bound"), torch.tensor([float(bound)]), None, node.name)
        last = k == len(steps) - 1
        op = XOp(lw.op_name(node, "" if last else f"_{kind}"), kind, shape, {}, {"input": [value, bound_op]})
        if last:
            lw.emit(node, op, nhwc)
        else:
            op.node = node.name
            value = lw.add(op).name


@lowers(Op.HARDTANH)
def _hardtanh(lw: _Lowering, node: Node) -> None:
    low, high = node.attrs["min_val"], node.attrs["max_val"]
    if (low, high) == (-1, 1):
        _unary("hard-tanh")(lw, node)
    else:
        _clamp(lw, node, low, high)


@lowers_aten("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default")
def _aten_clamp(lw: _Lowering, node: Node) -> None:
    target = node.attrs["target"]
    low = None if target == "aten.clamp_max.default" else _arg(node, 1, "min")
    high = _arg(node, 1, "max") if target == "aten.clamp_max.default" else _arg(node, 2, "max")
    if any(b is not None and not isinstance(b, int | float) for b in (low, high)):
        lw.custom(node, "clamp with tensor bounds")
        return
    _clamp(lw, node, low, high)


def _reduction(lw: _Lowering, node: Node, kind: str, dim: Any, keep: bool) -> None:
    src = node.inputs[0]
    rank = len(lw.logical_shape(src))
    axes = reduced_axes(dim if dim not in ([], ()) else None, rank)
    if not keep and len(axes) == rank:
        lw.custom(node, f"{kind} to a 0-d value")
        return
    # max is exact in any order; float sums and products read the logical layout, adding as the simulation does
    nhwc = _mark(lw, node, kind == "reduction_max" and src.name in lw.nhwc and keep)
    axes = sorted(_NHWC.index(d) for d in axes) if nhwc else axes
    attrs = {"axis": ("int32_vec", axes), "keep_dims": ("bool", bool(keep))}
    op = XOp(lw.op_name(node), kind, lw.phys_shape(node), attrs, {"input": [lw.value_as(src, nhwc)]})
    lw.emit(node, op, nhwc)


_REDUCTIONS = {
    "aten.amax.default": "reduction_max",
    "aten.sum.dim_IntList": "reduction_sum",
    "aten.prod.dim_int": "reduction_product",
}


@lowers_aten(*_REDUCTIONS)
def _aten_reduction(lw: _Lowering, node: Node) -> None:
    if _arg(node, 3, "dtype") is not None:
        lw.custom(node, "a reduction with a dtype: the .xmodel holds float32 tensors")
        return
    _reduction(lw, node, _REDUCTIONS[node.attrs["target"]], _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False)))


@lowers_aten("aten.stack.default")
def _stack(lw: _Lowering, node: Node) -> None:
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0) % len(lw.logical_shape(node))
    args = {"input": [lw.value_as(t, False) for t in tensors]}
    lw.emit(node, XOp(lw.op_name(node), "stack", lw.phys_shape(node), {"axis": ("int32", dim)}, args))


lowers_aten("aten.unflatten.int")(_reshape)


@lowers_aten("aten.to.dtype", "aten._to_copy.default", "aten.type_as.default")
def _to(lw: _Lowering, node: Node) -> None:
    """A conversion to the dtype the value already has moves nothing; another needs a cast of the tensor type."""
    src = node.inputs[0]
    if isinstance(node.meta, TensorMeta) and isinstance(src.meta, TensorMeta) and node.meta.dtype == src.meta.dtype:
        _reshape(lw, node)
        return
    lw.custom(node, "a cast to another dtype: the .xmodel writes every tensor as float32")


def _norm(lw: _Lowering, node: Node, kind: str, weight: str | None, bias: str | None,
          attrs: dict[str, tuple[str, Any]]) -> None:  # fmt: skip
    src = node.inputs[0]
    rank = len(lw.logical_shape(src))
    if rank not in (2, 4):
        lw.custom(node, f"{kind} of a {rank}-D tensor: XIR's channel is the last dimension")
        return
    nhwc = _mark(lw, node, rank == 4)
    args = {"input": [lw.value_as(src, nhwc)], "weight": [weight] if weight else [], "bias": [bias] if bias else []}
    lw.emit(node, XOp(lw.op_name(node), kind, lw.phys_shape(node), attrs, args), nhwc)


@lowers(Op.GROUP_NORM)
def _group_norm(lw: _Lowering, node: Node) -> None:
    weight = lw.param(node, "weight") if "weight" in node.params else None
    bias = lw.param(node, "bias") if "bias" in node.params else None
    attrs = {
        "num_groups": ("int32", node.attrs["num_groups"]),
        "num_channels": ("int32", lw.logical_shape(node)[1]),
        "eps": ("float", float(node.attrs["eps"])),
        "affine": ("bool", weight is not None),
    }
    _norm(lw, node, "groupnorm", weight, bias, attrs)


@lowers_aten("aten.instance_norm.default")
def _instance_norm(lw: _Lowering, node: Node) -> None:
    if not _arg(node, 5, "use_input_stats", True) or len(lw.logical_shape(node)) != 4:
        lw.custom(node, "instance norm with running statistics or of a non-4-D tensor")
        return
    weight, bias = (_arg(node, k, name) for k, name in ((1, "weight"), (2, "bias")))
    attrs = {"eps": ("float", float(_arg(node, 7, "eps", 1e-5))), "affine": ("bool", weight is not None)}
    _norm(lw, node, "instancenorm", weight and lw.value[weight.name], bias and lw.value[bias.name], attrs)


@lowers(Op.DROPOUT, Op.IDENTITY)
def _identity(lw: _Lowering, node: Node) -> None:
    """No op, unless the plan quantizes here: then XIR's `identity`, followed by its fix."""
    src = node.inputs[0]
    nhwc = _mark(lw, node, src.name in lw.nhwc and lw.logical_shape(src) == lw.logical_shape(node))
    if node.name not in lw.plan.outputs:
        lw.value[node.name] = lw.value[src.name] if nhwc else lw.value_as(src, False)
        return
    op = XOp(lw.op_name(node), "identity", lw.phys_shape(node), {}, {"input": [lw.value_as(src, nhwc)]})
    lw.emit(node, op, nhwc)


@lowers(Op.SELECT)
def _select(lw: _Lowering, node: Node) -> None:
    """x.select(dim, index): a strided_slice of one element along dim, which shrink_axis_mask removes."""
    src = node.inputs[0]
    dims = lw.logical_shape(src)
    index = node.attrs["index"]
    if not isinstance(index, int) or len(dims) < 2:
        lw.custom(node, "select with a symbolic index or of a 1-D tensor")
        return
    dim = node.attrs["dim"] % len(dims)
    direct = src.name in lw.nhwc and dim == 1  # NHWC without C is [N, H, W]: the logical order
    value = lw.value[src.name] if direct else lw.value_as(src, False)
    phys = lw.phys_shape(src) if direct else dims
    axis = 3 if direct else dim
    begin, end = [0] * len(dims), list(phys)
    begin[axis] = index % dims[dim]
    end[axis] = begin[axis] + 1
    attrs = {
        "begin": ("int32_vec", begin),
        "end": ("int32_vec", end),
        "strides": ("int32_vec", [1] * len(dims)),
        "shrink_axis_mask": ("int32", 1 << axis),
    }
    lw.emit(node, XOp(lw.op_name(node), "strided_slice", lw.phys_shape(node), attrs, {"input": [value]}))


@lowers(Op.EXPAND)
def _expand(lw: _Lowering, node: Node) -> None:
    """Broadcast along size-1 dimensions: a concat of copies per expanded dimension (XIR has no tile op)."""
    src = node.inputs[0]
    dims, out = lw.logical_shape(src), lw.logical_shape(node)
    if dims == out:
        _identity(lw, node)
        return
    lead = len(out) - len(dims)
    nhwc = _mark(lw, node, src.name in lw.nhwc and lead == 0)
    steps: list[XOp] = []
    value = lw.value[src.name] if nhwc else lw.value_as(src, False)
    if lead:
        dims = [1] * lead + dims
        steps.append(XOp(lw.op_name(node, "_rank"), "reshape", list(dims), {"shape": ("int32_vec", dims)}, {}))
    order = _NHWC if nhwc else list(range(len(out)))
    shape = [dims[i] for i in order]
    for axis, d in enumerate(order):
        if dims[d] == 1 and out[d] != 1:
            shape = [*shape[:axis], out[d], *shape[axis + 1 :]]
            steps.append(XOp(lw.op_name(node, f"_tile{len(steps)}"), "concat", shape, {"axis": ("int32", axis)}, {}))
    for k, op in enumerate(steps):
        op.args = {"input": [value] * (op.shape[op.attrs["axis"][1]] if op.type == "concat" else 1)}
        if k == len(steps) - 1:
            op.name = lw.op_name(node)
            lw.emit(node, op, nhwc)
        else:
            op.node = node.name
            value = lw.add(op).name

"""Rules for eltwise ops, activations, layout ops, resize, pad and the ops only a host computes (see `rules.py`)."""

from __future__ import annotations

import math
from numbers import Number

from ..export.deploy import LOWERINGS
from ..ir.graph import Node
from ..ir.ops import Op
from ..quant.dpu import DPU_LEAKY_SLOPE
from . import checks
from .rules import Context, Verdict, no, ok, op_label, rule, shape_of, verdict
from .table import Target

__all__ = ["NONLINEAR", "engine_nonlinear"]

# ---------------------------------------------------------------------------------------------- eltwise
_ELEW = {Op.ADD: "add", Op.SUB: "sub", Op.MUL: "mult"}
_ELEW_NAME = {Op.ADD: "ADD", Op.SUB: "SUB", Op.MUL: "MUL"}


def _scales_channels(ctx: Context, node: Node) -> bool:
    """`x * c` with a scalar or per-channel constant: the original tries it as a 1x1 depthwise conv."""
    other = node.attrs.get("other")
    if isinstance(other, Number):
        return True
    const = next((i for i in node.inputs if i.op is Op.CONST), None)
    if const is None or len(node.inputs) != 2:
        return False
    value = ctx.graph.params.get(const.params.get("value", ""))
    shape = shape_of(node)
    return value is not None and (value.numel() == 1 or (len(shape) >= 2 and value.numel() == shape[1]))


@rule(*_ELEW)
def _eltwise(ctx: Context, node: Node) -> Verdict:
    t, kind = ctx.target, _ELEW[node.op]
    if node.attrs.get("alpha", 1) != 1:
        return no(f"{node.op.value} can't be converted to XIR: alpha={node.attrs['alpha']}.")
    if t.eltwise is not None and kind in t.eltwise.elew_type:
        return ok("eltwise")
    if t.alu is not None and f"elew_{kind}" in t.alu.alu_type:
        return ok("alu")
    if node.op is Op.MUL and _scales_channels(ctx, node) and not isinstance(checks.dw_engine(t), str):
        return ok(checks.dw_engine(t).name)  # type: ignore[union-attr]
    if t.eltwise is None and not (t.alu and any(a.startswith("elew_") for a in t.alu.alu_type)):
        return no(f"{t.name} does not have eltwise-engine.")
    types = list(t.eltwise.elew_type if t.eltwise else []) + [a for a in (t.alu.alu_type if t.alu else ()) if
                                                              a.startswith("elew_")]  # fmt: skip
    return no(f"{t.name} does not support eltwise {_ELEW_NAME[node.op]} (it supports {', '.join(types)}).")


# ---------------------------------------------------------------------------------------------- activations
NONLINEAR = {Op.RELU: "relu", Op.RELU6: "relu_six", Op.LEAKY_RELU: "leaky_relu", Op.HARDSIGMOID: "hsigmoid",
             Op.HARDSWISH: "hswish", Op.HARDTANH: "relu_six"}  # fmt: skip


def engine_nonlinear(target: Target, engine: str) -> tuple[str, ...]:
    """The nonlinear types an engine applies to its own output."""
    found = {"conv": target.conv, "dwconv": target.dwconv, "alu": target.alu, "eltwise": target.eltwise,
             "pool": target.pool}.get(engine)  # fmt: skip
    return tuple(getattr(found, "nonlinear", ()) or ())


def _fusion(ctx: Context, node: Node, kind: str) -> str | None:
    """None when the activation fuses into its producer, else why not."""
    src = node.inputs[0]
    if not ctx.dpu(src):
        return f"{op_label(node)} can't be fused into its producer {src.name}, which is not on DPU."
    if len([u for u in src.users if u.op not in (Op.SIZE, Op.SCALAR)]) != 1 or src.name in ctx.outputs:
        return f"{op_label(node)} can't be fused into its producer {src.name}, which has other readers."
    engine = ctx.engines.get(src.name, "")
    listed = engine_nonlinear(ctx.target, engine)
    if kind not in listed:
        where = f"the {engine}-engine" if engine else f"{op_label(src)} (it only moves data)"
        return (f"{op_label(node)} can't be fused into its producer {src.name}: {kind} is not a nonlinear type of "
                f"{where}{' (' + ', '.join(listed) + ')' if listed else ''}.")  # fmt: skip
    return None


def _alone(target: Target, kind: str) -> str | None:
    """None when an ALU runs the activation by itself, else what is missing."""
    a = target.alu
    types, nonlinear = (set(a.alu_type), set(a.nonlinear)) if a else (set(), set())
    mult = bool(target.eltwise and "mult" in target.eltwise.elew_type) or "elew_mult" in types
    if kind == "leaky_relu" and ({"leaky_relu"} & types or "leaky_relu" in nonlinear):
        return None
    if kind == "hsigmoid" and ("hsigmoid" in types or "hsigmoid" in nonlinear):
        return None
    if kind == "hswish" and ("hswish" in nonlinear or ("hsigmoid" in types and mult)):
        return None
    if a is None:
        return f"{target.name} has no alu-engine to compute a single {kind}."
    return f"{target.name} does not support a single {kind} (its alu-engine computes {', '.join(a.alu_type)})."


@rule(*NONLINEAR)
def _activation(ctx: Context, node: Node) -> Verdict:
    kind = NONLINEAR[node.op]
    if node.op is Op.HARDTANH and (node.attrs["min_val"], node.attrs["max_val"]) != (0.0, 6.0):
        return no(f"hardtanh can't be assigned to DPU: only hardtanh(0, 6) (relu6) is a DPU nonlinear, got "
                  f"hardtanh({node.attrs['min_val']}, {node.attrs['max_val']}).")  # fmt: skip
    if node.op is Op.LEAKY_RELU and node.attrs["negative_slope"] != DPU_LEAKY_SLOPE:
        return no(f"Its alpa is {node.attrs['negative_slope']}, but DPU only support {DPU_LEAKY_SLOPE}.")
    not_fused = _fusion(ctx, node, kind)
    if not_fused is None:
        return ok(f"fused into {node.inputs[0].name}")
    if kind in ("relu", "relu_six"):
        return no(not_fused, f"{op_label(node)} can't be assigned to DPU alone.")
    alone = _alone(ctx.target, kind)
    return ok("alu") if alone is None else no(not_fused, alone)


# ---------------------------------------------------------------------------------------------- layout
@rule(Op.CAT)
def _cat(ctx: Context, node: Node) -> Verdict:
    """On the DPU; the allocator's concat checks follow once every input is decided (assign.py)."""
    return ok()


@rule(Op.FLATTEN, Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE, Op.CONTIGUOUS)
def _reshape(ctx: Context, node: Node) -> Verdict:
    """Follows its input; "First dimension is changed." is checked once its readers are decided (assign.py)."""
    return ok() if ctx.dpu(node.inputs[0]) else no("The input of reshape is not on DPU.")


@rule(Op.PERMUTE, Op.TRANSPOSE)
def _permute(ctx: Context, node: Node) -> Verdict:
    return no(f"DPU does not support {node.op.value}.")


@rule(Op.SLICE, Op.CHUNK, Op.SPLIT, Op.SELECT)
def _strided_slice(ctx: Context, node: Node) -> Verdict:
    return no(f"DPU does not support strided_slice ({node.op.value}).")


@rule(Op.GETITEM)
def _getitem(ctx: Context, node: Node) -> Verdict:
    parent = node.inputs[0]
    if parent.op in (Op.CHUNK, Op.SPLIT):
        return no(f"DPU does not support strided_slice ({parent.op.value}).")
    return no(f"getitem can't be converted to XIR: element {node.attrs['index']} of {op_label(parent)}.")


# ---------------------------------------------------------------------------------------------- resize, pad
_BILINEAR_SCALES = (2, 4)  # half-pixel centres (align_corners False), as a transposed depthwise conv


@rule(Op.INTERPOLATE)
def _interpolate(ctx: Context, node: Node) -> Verdict:
    a, t = node.attrs, ctx.target
    src = shape_of(node.inputs[0])
    if len(src) != 4 or a["mode"] not in ("nearest", "bilinear"):
        return no(f"interpolate can't be converted to XIR: {a['mode']} resampling of a {len(src)}-D tensor.")
    if a["align_corners"]:
        return no("DPU does not support align_corners = True")
    (h, w), (oh, ow) = src[2:], shape_of(node)[2:]
    scale = [ow / w, oh / h] if all(isinstance(d, int) for d in (h, w, oh, ow)) else None
    if a["mode"] == "bilinear":
        if scale and scale[0] == scale[1] and scale[0] in _BILINEAR_SCALES:
            engine = checks.dw_engine(t)
            if isinstance(engine, str):
                return no(f"Try to convert bilinear upsample to transposed depthwise conv2d failed. {engine}")
            return ok(engine.name)
        return no(
            f"Try to convert bilinear upsample to transposed depthwise conv2d failed: output / input scale is {scale} "
            f"(supported: {', '.join(map(str, _BILINEAR_SCALES))}, equal in width and height).",
            "DPU does not support BILINEAR mode.(only support NEAREST mode).",
        )
    if scale is None or any(s != math.floor(s) or s < 1 for s in scale):
        return no(f"DPU only supports nearest upsampling by an integer scale, got {scale}.")
    cp = t.load_channel_parallel or (t.conv.input_channel_parallel if t.conv else 1)
    return verdict(checks.in_channel(src[1], cp), "load")


@rule(Op.PAD)
def _pad(ctx: Context, node: Node) -> Verdict:
    a, t = node.attrs, ctx.target
    if a["mode"] != "constant":
        return no(f"pad can't be converted to XIR: {a['mode']} padding (DPU only support CONSTANT or SYMMETRIC mode).")
    src = shape_of(node.inputs[0])
    if len(src) != 4 or len(a["pad"]) > 4:
        return no(f"DPU only pads the height and width of a 4-D feature map, got pad={list(a['pad'])} on a "
                  f"{len(src)}-D tensor.")  # fmt: skip
    cp = t.load_channel_parallel or (t.conv.input_channel_parallel if t.conv else 1)
    return verdict(checks.in_channel(src[1], cp), "load")


# ---------------------------------------------------------------------------------------------- host ops
@rule(Op.SOFTMAX)
def _softmax(ctx: Context, node: Node) -> Verdict:
    if ctx.target.alu is not None and "softmax" in ctx.target.alu.alu_type:
        return ok("alu")
    return no(f"softmax can't be assigned to DPU: {ctx.target.name} has no engine that computes softmax.")


_HOST = (Op.EMBEDDING, Op.SIGMOID, Op.TANH, Op.SILU, Op.GELU, Op.LAYER_NORM, Op.GROUP_NORM, Op.DIV,
         Op.BATCH_NORM, Op.ATEN, Op.EXPAND, Op.PIXEL_SHUFFLE, Op.DROPOUT, Op.IDENTITY, Op.CONV1D, Op.CONV3D,
         Op.CONV_TRANSPOSE1D, Op.CONV_TRANSPOSE3D)  # fmt: skip


@rule(*_HOST)
def _host(ctx: Context, node: Node) -> Verdict:
    """No engine of any DPU target computes these (their XIR form, where one exists, runs on the CPU)."""
    if node.op not in LOWERINGS:
        return no(f"{op_label(node)} can't be converted to XIR.")
    if node.op in (Op.SIGMOID, Op.TANH, Op.SILU, Op.GELU):
        listed = sorted({n for e in ("conv", "dwconv", "alu", "eltwise", "pool")
                         for n in engine_nonlinear(ctx.target, e)})  # fmt: skip
        return no(f"{op_label(node)} can't be assigned to DPU: it is not a nonlinear type of {ctx.target.name} "
                  f"({', '.join(listed)}).")  # fmt: skip
    return no(f"{op_label(node)} can't be assigned to DPU.")


@rule(Op.CUSTOM)
def _custom(ctx: Context, node: Node) -> Verdict:
    """A register_custom_op op runs on the CPU with the user's implementation (VAIQ35 6)."""
    return no(f"{op_label(node)} can't be assigned to DPU: a custom op runs on the CPU with your implementation.")

"""Rules for convolutions, fully-connected layers and pooling (see `rules.py` for how they are used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir.graph import Node
from ..ir.ops import Op
from . import checks
from .rules import Context, Verdict, first, no, op_label, pair, rule, shape_of, verdict

__all__: list[str] = []


def _conv_pads(padding: Any, kh: int, kw: int, dh: int, dw: int) -> list[int]:
    """PyTorch padding as XIR [left, right, top, bottom]."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return [tw // 2, tw - tw // 2, th // 2, th - th // 2]
    ph, pw = pair(padding)
    return [pw, pw, ph, ph]


@dataclass(frozen=True)
class _Conv:
    cin: int
    cout: int
    groups: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: list[int]
    ih: Any
    iw: Any

    @property
    def depthwise(self) -> bool:
        return self.groups == self.cin == self.cout and self.cin > 1

    @property
    def dilated(self) -> tuple[int, int]:
        return (self.kw - 1) * self.dw + 1, (self.kh - 1) * self.dh + 1


def _geometry(ctx: Context, node: Node, transposed: bool = False) -> _Conv:
    a = node.attrs
    w = ctx.graph.params[node.params["weight"]]
    if transposed:  # [in, out / groups, kh, kw]
        cin, cout = int(w.shape[0]), int(w.shape[1]) * a["groups"]
    else:  # [out, in / groups, kh, kw]
        cin, cout = int(w.shape[1]) * a["groups"], int(w.shape[0])
    kh, kw = int(w.shape[2]), int(w.shape[3])
    (sh, sw), (dh, dw) = pair(a["stride"]), pair(a["dilation"])
    ishape = shape_of(node.inputs[0])
    ih, iw = (ishape[2], ishape[3]) if len(ishape) == 4 else (None, None)
    return _Conv(cin, cout, a["groups"], kh, kw, sh, sw, dh, dw, _conv_pads(a["padding"], kh, kw, dh, dw), ih, iw)


def _conv_engine(ctx: Context, node: Node, g: _Conv, transposed: bool = False) -> Verdict:
    t, conv = ctx.target, ctx.target.conv
    if conv is None:
        return no(f"{t.name} does not have conv-engine.")
    weights = [g.cout, g.kh, g.kw, g.cin // g.groups]
    if transposed:
        geometry = first(checks.transposed_kernel(g.kw, g.sw, conv.kernel_size),
                          checks.transposed_kernel(g.kh, g.sh, conv.kernel_size))  # fmt: skip
    else:
        geometry = checks.kernel(g.kw, g.kh, conv.kernel_size)
    kw_d, kh_d = g.dilated
    return verdict(
        first(
            geometry,
            checks.conv_bank(t, conv.weight_bank, conv.output_channel_parallel, weights),
            None if transposed else checks.stride(g.sw, g.sh, g.kw, g.kh, g.iw, g.ih, conv.stride),
            checks.in_channel(g.cin, conv.input_channel_parallel),
            checks.out_channel(g.cout, conv.input_channel_parallel) if transposed else None,
            checks.pads_within_kernel(g.pads, kw_d, kh_d),
        ),
        "conv",
    )


def _dw(ctx: Context, g: _Conv, transposed: bool = False, what: str = "") -> Verdict:
    engine = checks.dw_engine(ctx.target)
    if isinstance(engine, str):
        kind = "transposed convolution" if transposed else "convolution"
        return no(f"{engine} {what or f'This is a depthwise {kind} (groups = channels = {g.cin}).'}")
    kw_d, kh_d = g.dilated
    if transposed:
        geometry = first(checks.transposed_kernel(g.kw, g.sw, engine.kernel),
                          checks.transposed_kernel(g.kh, g.sh, engine.kernel))  # fmt: skip
    else:
        geometry = first(
            checks.kernel(g.kw, g.kh, engine.kernel),
            checks.stride(g.sw, g.sh, g.kw, g.kh, g.iw, g.ih, engine.stride),
        )
    if not transposed and engine.name == "dwconv" and ctx.target.type == "DPUCAHX8H" and g.sw > g.kw:
        geometry = geometry or (f"The stride_w({g.sw}) > kernel_w({g.kw}), but {ctx.target.name} only support "
                                "stride_w <= kernel_w.")  # fmt: skip
    pads = checks.pad_limits(g.pads, engine.alu) if engine.alu else checks.pads_within_kernel(g.pads, kw_d, kh_d)
    return verdict(
        first(
            geometry,
            checks.in_channel(g.cin, engine.channel_parallel),
            checks.out_channel(g.cout, engine.channel_parallel),
            checks.dw_bank(ctx.target, engine.weight_bank, engine.channel_parallel, [1, g.kh, g.kw, g.cin]),
            pads,
        ),
        engine.name,
    )


@rule(Op.CONV2D)
def _conv2d(ctx: Context, node: Node) -> Verdict:
    g = _geometry(ctx, node)
    return _dw(ctx, g) if g.depthwise else _conv_engine(ctx, node, g)


@rule(Op.CONV_TRANSPOSE2D)
def _conv_transpose2d(ctx: Context, node: Node) -> Verdict:
    g = _geometry(ctx, node, transposed=True)
    if any(p != 0 for p in pair(node.attrs["output_padding"])):
        return no("DPU does not support output_padding.")
    return _dw(ctx, g, transposed=True) if g.depthwise else _conv_engine(ctx, node, g, transposed=True)


@rule(Op.LINEAR)
def _linear(ctx: Context, node: Node) -> Verdict:
    """A fully-connected layer runs on the conv engine as a 1x1 convolution over its last dimension."""
    w = ctx.graph.params[node.params["weight"]]
    out_f, in_f = int(w.shape[0]), int(w.shape[1])
    conv = ctx.target.conv
    if conv is None:
        return no(f"{ctx.target.name} does not have conv-engine.")
    return verdict(
        first(
            checks.conv_bank(ctx.target, conv.weight_bank, conv.output_channel_parallel, [out_f, 1, 1, in_f]),
            checks.in_channel(in_f, conv.input_channel_parallel),
        ),
        "conv",
    )


@rule(Op.MATMUL)
def _matmul(ctx: Context, node: Node) -> Verdict:
    return no("matmul can't be assigned to DPU: both operands are activations, and the conv engine multiplies "
               "activations by weights only.")  # fmt: skip


@rule(Op.CHANNEL_SCALE)
def _channel_scale(ctx: Context, node: Node) -> Verdict:
    """A batch-norm that could not be folded: a per-channel multiply-add, i.e. a 1x1 depthwise convolution."""
    shape = shape_of(node)
    if len(shape) not in (2, 4):
        return no(f"channel_scale can't be converted to XIR: a per-channel scale on a {len(shape)}-D tensor.")
    c = shape[1]
    ih, iw = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
    what = "This is a per-channel scale (a batch-norm that was not folded), a 1x1 depthwise convolution."
    return _dw(ctx, _Conv(c, c, c, 1, 1, 1, 1, 1, 1, [0, 0, 0, 0], ih, iw), what=what)


# ---------------------------------------------------------------------------------------------- pooling
def _pool(ctx: Context, node: Node, kind: str, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]) -> Verdict:
    engine = checks.pool_engine(ctx.target, kind, op_label(node))
    if isinstance(engine, str):
        return no(engine)
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    ishape = shape_of(node.inputs[0])
    ih, iw = (ishape[2], ishape[3]) if len(ishape) == 4 else (None, None)
    pads = [pw, pw, ph, ph]
    square = None
    if engine.name == "pool" and kind == "avg" and kh != kw:
        square = f"DPU only supports avgpool with square kernel, but this op has kernel {kw} x {kh}."
    return verdict(
        first(
            square,
            checks.kernel(kw, kh, engine.kernel),
            checks.stride(sw, sh, kw, kh, iw, ih, engine.stride),
            checks.pad_limits(pads, engine.alu) if engine.alu else checks.pads_within_kernel(pads, kw, kh),
        ),
        engine.name,
    )


@rule(Op.MAX_POOL2D)
def _max_pool(ctx: Context, node: Node) -> Verdict:
    a = node.attrs
    if pair(a["dilation"]) != (1, 1):
        return no(f"max_pool2d can't be converted to XIR: max pooling with dilation {list(pair(a['dilation']))}.")
    return _pool(ctx, node, "max", pair(a["kernel_size"]), pair(a["stride"]), pair(a["padding"]))


@rule(Op.AVG_POOL2D)
def _avg_pool(ctx: Context, node: Node) -> Verdict:
    a = node.attrs
    if a["divisor_override"] is not None:
        return no(f"avg_pool2d can't be converted to XIR: divisor_override={a['divisor_override']}.")
    padding = pair(a["padding"])
    if not a["count_include_pad"] and any(padding):
        return no(f"DPU only supports avgpool that counts the padding (count_include_pad = True); this op pads "
                   f"{list(padding)} with count_include_pad = False.")  # fmt: skip
    return _pool(ctx, node, "avg", pair(a["kernel_size"]), pair(a["stride"]), padding)


def _fixed_window(node: Node) -> tuple[int, int] | str:
    (h, w), (oh, ow) = shape_of(node.inputs[0])[2:], shape_of(node)[2:]
    if not all(isinstance(d, int) for d in (h, w, oh, ow)) or h % oh or w % ow:
        return f"adaptive average pooling {h}x{w} -> {oh}x{ow} has no fixed kernel"
    return h // oh, w // ow


@rule(Op.ADAPTIVE_AVG_POOL2D)
def _adaptive_avg_pool(ctx: Context, node: Node) -> Verdict:
    k = _fixed_window(node)
    if isinstance(k, str):
        return no(f"adaptive_avg_pool2d can't be converted to XIR: {k}.")
    return _pool(ctx, node, "avg", k, k, (0, 0))


@rule(Op.MEAN)
def _mean(ctx: Context, node: Node) -> Verdict:
    """A mean over the height and width of a feature map is a global average pool; any other mean is not."""
    shape = shape_of(node.inputs[0])
    dims = node.attrs["dim"] if node.attrs["dim"] is not None else list(range(len(shape)))
    dims = sorted(d % max(len(shape), 1) for d in ([dims] if isinstance(dims, int) else dims))
    if len(shape) != 4 or dims != [2, 3] or not all(isinstance(d, int) for d in shape[2:]):
        return no(f"mean can't be assigned to DPU: the DPU averages only over the height and width of a 4-D "
                   f"feature map (as a global average pool), here dim={dims} of a {len(shape)}-D tensor.")  # fmt: skip
    k = (shape[2], shape[3])
    return _pool(ctx, node, "avg", k, k, (0, 0))

"""The limit checks the per-op rules are built from, and which engine of a target runs what.

Each check returns None when the value is within the target's limit, else the reason, worded as the original's
rule-based inspector words it (`pytorch_nndct/hardware/dpu_op_filter.py` in Vitis AI 3.5) with the value that
broke the limit and the limit itself. Kernels print as `width x height` and strides, pads and weight shapes in XIR
order (`[w, h]`, `[left, right, top, bottom]`, `[out, h, w, in]`), as the original's messages do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .table import AluEngine, Range, Target

__all__ = [
    "DwEngine",
    "PoolChoice",
    "conv_bank",
    "dw_bank",
    "dw_engine",
    "in_channel",
    "kernel",
    "out_channel",
    "pad_limits",
    "pads_within_kernel",
    "pool_engine",
    "stride",
    "transposed_kernel",
]

_DEFAULT_KERNEL, _DEFAULT_STRIDE = Range.parse("1-16"), Range.parse("1-4")  # the original's defaults


def kernel(kw: int, kh: int, limit: Range) -> str | None:
    if kw in limit and kh in limit:
        return None
    return f"'kernel'({kw} x {kh}) is not in DPU supported range({limit})."


def stride(sw: int, sh: int, kw: int, kh: int, iw: int | str, ih: int | str, limit: Range) -> str | None:
    """Not checked for a window that covers the whole input (one output pixel: the stride is never used)."""
    if (iw, ih) == (kw, kh) or (sw in limit and sh in limit):
        return None
    return f"'stride'([{sw}, {sh}]) is not in DPU supported range({limit})."


def transposed_kernel(k: int, s: int, limit: Range) -> str | None:
    """A transposed conv runs as `k / s` sub-kernels of size k // s or k // s + 1."""
    if k // s in limit and (k % s == 0 or k // s + 1 in limit):
        return None
    return f"'kernel / stride'({k} / {s}) is not in DPU supported range({limit})."


def in_channel(ic: int | str, channel_parallel: int) -> str | None:
    limit = 256 * channel_parallel
    if not isinstance(ic, int) or ic <= limit:
        return None
    return f"DPU only supports 'input_channel'({ic}) less than ({limit})"


def out_channel(oc: int | str, channel_parallel: int) -> str | None:
    limit = 256 * channel_parallel
    if not isinstance(oc, int) or oc <= limit:
        return None
    return f"DPU only support 'output_channel'({oc}) less than {limit}"


_PAD_NAMES = ("pad_left", "pad_right", "pad_top", "pad_bottom")


def pads_within_kernel(pads: Sequence[int], kw: int, kh: int) -> str | None:
    """Without pad limits in the target: each pad at most the (dilated) kernel size."""
    if any(p < 0 for p in pads):
        return f"DPU only support non-negative 'pad'({list(pads)})"
    for name, p, k, side in zip(_PAD_NAMES, pads, (kw, kw, kh, kh), ("width", "width", "height", "height")):
        if p > k:
            return f"DPU only supports '{name}'({p}) less than 'kernel_{side}'({k})"
    return None


def pad_limits(pads: Sequence[int], alu: AluEngine) -> str | None:
    """The ALU's pad ranges (pad_left / pad_top usually 0-15, pad_right / pad_bottom 0-255)."""
    if any(p < 0 for p in pads):
        return f"DPU only support non-negative 'pad'({list(pads)})"
    limits = (alu.pad_left, alu.pad_right, alu.pad_top, alu.pad_bottom)
    for name, p, limit in zip(_PAD_NAMES, pads, limits):
        if limit is not None and p not in limit:
            return f"'{name}'({p}) is not in DPU supported range({limit})."
    return None


def conv_bank(target: Target, weight_bank: str, ocp: int, shape_ohwi: Sequence[int]) -> str | None:
    """The weights of one output-channel-parallel slice must fit the weight bank's depth."""
    bank = target.bank(weight_bank)
    if bank is None:  # IPU overlays keep weights in memory tiles the table does not size
        return None
    _, kh, kw, ic = shape_ohwi
    depth = kh * kw * math.ceil(ic / bank.bank_width) * math.ceil(ocp / bank.bank_num)
    if depth <= bank.bank_depth:
        return None
    return (
        f"Weights({list(shape_ohwi)}) is too large to be loaded into parameter buffer. 'kernel_h * kernel_w * "
        f"⌈input_channel / weights_bank_width⌉ * ⌈output_channel_parallel / weights_bank_num⌉({depth})' is "
        f"supposed to be less equal than {bank.bank_depth}."
    )


def dw_bank(target: Target, weight_bank: str, channel_parallel: int, shape_ohwi: Sequence[int]) -> str | None:
    bank = target.bank(weight_bank)
    if bank is None:
        return None
    _, kh, kw, _ = shape_ohwi
    depth = kh * kw * math.ceil(channel_parallel / bank.bank_width)
    if depth <= bank.bank_depth:
        return None
    return (
        f"Weights({list(shape_ohwi)}) is too large to be loaded into parameter buffer. 'kernel_h * kernel_w * "
        f"⌈channel_parallel / weights_bank_width⌉({depth})' is supposed to be less equal than {bank.bank_depth}."
    )


# ---------------------------------------------------------------------------------------------- engines
_ALU_DWCONV = frozenset({"dwconv", "dwconv_no_bias", "macc_temp"})  # macc_temp: DPUCV2DX8G's multiply-accumulate
_ALU_POOL = {"avg": frozenset({"avg_pool", "macc_temp"}), "max": frozenset({"max_pool", "max_reduce", "comp_temp"})}
_POOL_TYPES = {"avg": frozenset({"avg"}), "max": frozenset({"max", "max_reduce"})}


@dataclass(frozen=True)
class DwEngine:
    """The engine that runs depthwise convolutions (and per-channel scales) on a target."""

    name: str  # "dwconv" or "alu"
    channel_parallel: int
    kernel: Range
    stride: Range
    weight_bank: str
    alu: AluEngine | None  # its pad limits, when the ALU runs it


def dw_engine(target: Target) -> DwEngine | str:
    """The depthwise engine, or why there is none."""
    if target.dwconv is not None:
        d = target.dwconv
        return DwEngine("dwconv", d.channel_parallel, d.kernel_size or _DEFAULT_KERNEL, d.stride or _DEFAULT_STRIDE,
                        d.weight_bank, None)  # fmt: skip
    a = target.alu
    if a is not None and _ALU_DWCONV & set(a.alu_type):
        return DwEngine("alu", a.channel_parallel, a.kernel_size or _DEFAULT_KERNEL, a.stride or _DEFAULT_STRIDE,
                        a.weight_bank, a)  # fmt: skip
    if a is not None:
        return f"{target.name} does not have depthwise-conv-engine (its alu-engine computes {', '.join(a.alu_type)})."
    return f"{target.name} does not have depthwise-conv-engine."


@dataclass(frozen=True)
class PoolChoice:
    name: str  # "alu" or "pool"
    kernel: Range
    stride: Range
    alu: AluEngine | None


def pool_engine(target: Target, kind: str, op: str) -> PoolChoice | str:
    """The engine that runs `kind` ('max' or 'avg') pooling, or why none does. The ALU is preferred, as in the
    original; the dedicated pool engine's limits default to 1-8 where the file gives none."""
    a, p = target.alu, target.pool
    if a is not None and _ALU_POOL[kind] & set(a.alu_type):
        return PoolChoice("alu", a.kernel_size or Range.parse("1-8"), a.stride or Range.parse("1-8"), a)
    if p is not None and _POOL_TYPES[kind] & set(p.pool_type):
        limit = p.avg_limit if kind == "avg" else p.max_limit
        default = Range.parse("1-8")
        return PoolChoice("pool", limit.kernel_size if limit else default, limit.stride if limit else default, None)
    if a is None and p is None:
        return f"{target.name} does not have pool-engine."
    engines = [f"pool-engine: {', '.join(p.pool_type)}"] if p else []
    engines += [f"alu-engine: {', '.join(a.alu_type)}"] if a else []
    return f"{target.name} does not support {op} ({'; '.join(engines)})."

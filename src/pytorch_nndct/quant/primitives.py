"""Pure, bit-exact quantization numerics (SPEC 2, 2.1, 2.4). Everything else calls these.

All functions work on whole tensors with torch ops, on the tensor's device. Scaling by 2^fp is exact in
floating point, and the rounding modes are computed from `floor` and the exact fractional part, so the
results do not depend on `x + 0.5` rounding in float32. Float steps (CPU/GPU targets) divide by the step in
float32, as ONNX QuantizeLinear does; how a float step is found lives in `scales`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .spec import CalibSpec, DataType, QuantSpec, RoundMode, fp_cap

__all__ = [
    "ALL_ZERO_FIX_POS",
    "DIFFS_SCOPE",
    "avgpool_factor",
    "blockwise",
    "calibrate",
    "channel_fix_pos",
    "channel_steps",
    "diffs_errors",
    "fake_cast",
    "fake_quantize",
    "fix_pos_diffs",
    "fix_pos_maxmin",
    "fix_pos_percentile",
    "float_scales",
    "int32_bias",
    "quantize",
    "round_",
    "value_range",
]

ALL_ZERO_FIX_POS = 18  # the fix position an all-zero tensor gets before capping
DIFFS_SCOPE = 5  # candidates fp0 .. fp0 + 4
_CHUNK = 1 << 22  # elements per batched candidate evaluation (bounds the temporary memory)
_WIDE = 24  # integers above 2^24 are not exact in float32: wider grids (32-bit biases) compute in float64
_TORCH_DTYPES = {DataType.BFLOAT16: torch.bfloat16, DataType.FLOAT16: torch.float16}


def round_(x: torch.Tensor, mode: RoundMode) -> torch.Tensor:
    """Round to integers (kept in x's float dtype) with the given tie rule."""
    if mode is RoundMode.HALF_EVEN:
        return torch.round(x)
    if mode is RoundMode.FLOOR:
        return torch.floor(x)
    if mode is RoundMode.CEIL:
        return torch.ceil(x)
    if mode is RoundMode.HALF_AWAY:
        a = x.abs()
        fa = torch.floor(a)
        return torch.copysign(fa + (a - fa >= 0.5).to(x.dtype), x)
    if mode is RoundMode.HALF_UP:
        return _half_up(x)
    if mode is RoundMode.HALF_DOWN:
        return -_half_up(-x)  # ceil(x - 0.5) == -floor(-x + 0.5)
    raise ValueError(f"unknown round mode {mode!r}")


def _half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 0.5) without the float rounding of `x + 0.5` (0.49999997 + 0.5 rounds up to 1.0).

    `x - floor(x)` is exact except for x in (-0.5, 0), where the true fraction is above 0.5 and the
    rounded one is still >= 0.5, so the comparison is right everywhere.
    """
    f = torch.floor(x)
    return f + (x - f >= 0.5).to(x.dtype)


def fake_cast(x: torch.Tensor, dtype: DataType) -> torch.Tensor:
    """x rounded to a float data type and back (round to nearest even); float32 and int leave x as it is."""
    target = _TORCH_DTYPES.get(dtype)
    if target is None or x.dtype == target or not x.is_floating_point():
        return x
    return x.to(target).to(x.dtype)


def float_scales(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Float-scale specs: max|x| / qmax per tensor, or per slice along spec.axis (shaped to broadcast);
    an all-zero slice gets scale 1."""
    a = x.detach().abs().float()
    if spec.per_channel:
        dims = [d for d in range(x.dim()) if d != spec.axis % x.dim()]
        amax = a.amax(dim=dims, keepdim=True) if dims else a
    else:
        amax = a.max().reshape([1] * x.dim())
    s = amax / spec.qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def int32_bias(
    bias: torch.Tensor, channel_scales: torch.Tensor, input_step: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float-scale weights: the bias on the grid an integer kernel adds it on, the input's step times each
    output channel's weight scale. Returns (the integers, that step), both float64."""
    step = channel_scales.reshape(-1).double() * float(input_step)
    return torch.round(bias.double() / step), step


Step = torch.Tensor | float | None
ZeroPoint = torch.Tensor | int | None


def _step(x: torch.Tensor, spec: QuantSpec, scale: Step, zero_point: ZeroPoint) -> tuple[Step, ZeroPoint]:
    """The float step and zero point of a spec that is not a plain fix position, or (None, None)."""
    if scale is None and spec.scale is not None:
        scale, zero_point = spec.scale, spec.zero_point
    if scale is None and spec.float_scale:
        scale = float_scales(x, spec)
    return scale, zero_point


def _as(value: torch.Tensor | float | int, like: torch.Tensor) -> torch.Tensor | float | int:
    return value.to(like.device, like.dtype) if isinstance(value, torch.Tensor) else value


def _nonzero(zero_point: ZeroPoint) -> bool:
    return zero_point is not None and not (isinstance(zero_point, int) and zero_point == 0)


def quantize(x: torch.Tensor, spec: QuantSpec, scale: Step = None, zero_point: ZeroPoint = None) -> torch.Tensor:
    """The integers q = clamp(round(x * 2^fp), qmin, qmax), in x's dtype.

    Float steps: clamp(round(x / s) + zero_point, qmin, qmax), s from `scale` (a number, or a tensor that
    broadcasts against x), else the spec's calibrated `scale`, else (float-scale parameters) max|x| / qmax.
    Grids wider than 24 bits are computed and returned in float64 (float32 cannot hold their integers).
    """
    if not spec.is_int:
        raise ValueError(f"cannot quantize to integers with a {spec.dtype.value} spec; use fake_cast")
    scale, zero_point = _step(x, spec, scale, zero_point)
    if scale is not None:
        work = x.double() if spec.bitwidth > _WIDE else x
        s = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=torch.float32)
        q = round_(work / _as(s, work), spec.round_mode)
        if _nonzero(zero_point):
            q = q + _as(zero_point, q)
        q = q.clamp_(spec.qmin, spec.qmax)
        return q if work is not x else q.to(x.dtype)
    if spec.fix_pos is None:
        raise ValueError("cannot quantize with a spec that has no fix position (not calibrated)")
    q = round_(x * math.ldexp(1.0, spec.fix_pos), spec.round_mode)
    return q.clamp_(spec.qmin, spec.qmax)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, scale: Step = None, zero_point: ZeroPoint = None) -> torch.Tensor:
    """x rounded onto its grid: quantize(x) * 2^-fp, or (q - zero_point) * s for float steps (see quantize);
    float data types: x rounded to that type (fake_cast)."""
    if not spec.is_int:
        return fake_cast(x, spec.dtype)
    scale, zero_point = _step(x, spec, scale, zero_point)
    if scale is None:
        return quantize(x, spec).mul_(math.ldexp(1.0, -spec.fix_pos))
    q = quantize(x, spec, scale, zero_point)
    if _nonzero(zero_point):
        q = q - _as(zero_point, q)
    s = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=torch.float32)
    return q.mul_(_as(s, q)).to(x.dtype)


BLOCK = 1 << 20  # elements per slice in blockwise


def blockwise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """An elementwise `fn` applied to slices of `x` along its first dimension, the results put together: the
    temporaries `fn` makes stay small when `x` is a large weight (rounding half away from zero alone holds five
    tensors the size of its input)."""
    if x.dim() == 0 or x.numel() <= BLOCK:
        return fn(x)
    rows = max(1, BLOCK // x[0].numel())
    out = None
    for start, block in zip(range(0, len(x), rows), x.split(rows), strict=True):
        value = fn(block)
        out = torch.empty(x.shape, dtype=value.dtype, device=value.device) if out is None else out
        out[start : start + len(block)] = value
    return out


def channel_fix_pos(x: torch.Tensor, spec: QuantSpec, calib: CalibSpec) -> torch.Tensor:
    """Per-channel power-of-two: the fix position of each slice along spec.axis by "diffs" (5 candidates)
    or "maxmin" (fp0), as fix_pos_diffs finds it for that slice alone (int64, one per slice)."""
    x = x.detach()
    rows = x.movedim(spec.axis % x.dim(), 0).reshape(x.shape[spec.axis], -1) if x.dim() else x.reshape(1, 1)
    lo, hi = rows.amin(dim=1).double(), rows.amax(dim=1).double()
    half = 2.0 ** (spec.bitwidth - 1)
    step = torch.maximum(lo / (-half - 0.5), hi / (half - 0.5))
    zero = step <= 0
    fp0 = torch.floor(torch.log2(1.0 / torch.where(zero, torch.ones_like(step), step))).long()
    best = fp0.clone()
    if calib.method != "maxmin":
        errs = []
        for k in range(DIFFS_SCOPE):
            s = torch.pow(2.0, (fp0 + k).to(x.dtype)).unsqueeze(1)
            q = round_(rows * s, spec.round_mode).clamp_(spec.qmin, spec.qmax)
            err = (rows - q / s).double()
            errs.append((err * err).sum(dim=1))
        best = fp0 + torch.argmin(torch.stack(errs), dim=0)  # the first minimum: the smaller fp wins a tie
    best = torch.where(zero, torch.full_like(best, ALL_ZERO_FIX_POS), best)
    return best.clamp(max=fp_cap(spec.bitwidth))


def channel_steps(fix_pos: torch.Tensor, spec: QuantSpec, ndim: int) -> torch.Tensor:
    """2^-fp per slice, shaped to broadcast along spec.axis of an `ndim`-dimensional tensor (float32)."""
    shape = [1] * ndim
    if ndim:
        shape[spec.axis % ndim] = -1
    return torch.pow(2.0, -fix_pos.double()).float().reshape(shape)


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) over all elements, as Python floats (one pass)."""
    lo, hi = torch.aminmax(x.detach().reshape(-1))
    return lo.item(), hi.item()


def _fp0(lo: float, hi: float, bitwidth: int) -> int | None:
    """Largest fp with no clipping beyond half an LSB; None for an all-zero tensor."""
    step = max(lo / (-(2 ** (bitwidth - 1)) - 0.5), hi / (2 ** (bitwidth - 1) - 0.5))
    if step <= 0.0:
        return None
    return math.floor(math.log2(1.0 / step))


def fix_pos_maxmin(x: torch.Tensor, bitwidth: int, value_range_: tuple[float, float] | None = None) -> int:
    """The "maxmin" method: fp0 only (also used for network inputs)."""
    fp0 = _fp0(*(value_range_ or value_range(x)), bitwidth)
    return min(ALL_ZERO_FIX_POS if fp0 is None else fp0, fp_cap(bitwidth))


def diffs_errors(x: torch.Tensor, spec: QuantSpec, candidates: list[int]) -> torch.Tensor:
    """Sum of squared quantization errors for each candidate fp, evaluated batched.

    The error of each element is computed in x's dtype, then squared and summed in float64.
    """
    flat = x.detach().reshape(-1)
    scales = torch.tensor([math.ldexp(1.0, fp) for fp in candidates], dtype=x.dtype, device=x.device)
    total = torch.zeros(len(candidates), dtype=torch.float64, device=x.device)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start : start + _CHUNK].unsqueeze(0)
        q = round_(part * scales[:, None], spec.round_mode).clamp_(spec.qmin, spec.qmax)
        err = (part - q / scales[:, None]).double()
        total += (err * err).sum(dim=1)
    return total


ErrorsFn = Callable[[torch.Tensor, QuantSpec, list[int]], torch.Tensor]


def fix_pos_diffs(
    x: torch.Tensor,
    spec: QuantSpec,
    scope: int = DIFFS_SCOPE,
    errors: ErrorsFn = diffs_errors,
    value_range_: tuple[float, float] | None = None,
) -> int:
    """The "diffs" method (SPEC 2.1): of fp0 .. fp0+scope-1, the fp with the smallest squared error.

    Ties go to the smaller fp. An all-zero tensor gets ALL_ZERO_FIX_POS; the result is capped at 12 for
    bit widths <= 8 and at 15 otherwise. `errors` may be a fused implementation of `diffs_errors`.
    """
    fp0 = _fp0(*(value_range_ or value_range(x)), spec.bitwidth)
    cap = fp_cap(spec.bitwidth)
    if fp0 is None:
        return min(ALL_ZERO_FIX_POS, cap)
    if scope <= 1:
        return min(fp0, cap)
    candidates = list(range(fp0, fp0 + scope))
    errs = errors(x, spec, candidates)
    best = candidates[int(torch.argmin(errs).item())]
    return min(best, cap)


# DPU average pooling: multiply the window sum by M / 2^S instead of dividing by k (SPEC 2.4).
_AVGPOOL_KNOWN = {9: (7, 6), 25: (10, 8), 36: (7, 8), 49: (21, 10), 196: (21, 12)}


def avgpool_factor(kernel_area: int) -> tuple[int, int]:
    """(M, S) such that the DPU computes an average over `kernel_area` values as sum * M / 2^S."""
    if kernel_area <= 0:
        raise ValueError(f"kernel area must be positive, got {kernel_area}")
    if kernel_area in _AVGPOOL_KNOWN:
        return _AVGPOOL_KNOWN[kernel_area]
    best: tuple[float, int, int] | None = None
    for s in range(math.ceil(math.log2(kernel_area * 128))):
        m = round(2**s / kernel_area)
        err = abs(m / 2**s - 1 / kernel_area)
        if best is None or err < best[0]:
            best = (err, m, s)
    assert best is not None
    return best[1], best[2]


def fix_pos_percentile(x: torch.Tensor, bitwidth: int, percentage: float) -> int:
    """The "percentile" method: maxmin on [-p, p], p the `percentage` percentile of |x|."""
    flat = x.detach().reshape(-1).abs().float()
    k = min(flat.numel(), max(1, math.ceil(flat.numel() * percentage / 100.0)))
    p = float(flat.kthvalue(k).values) if k < flat.numel() else float(flat.max())
    return fix_pos_maxmin(x, bitwidth, (-p, p))


def calibrate(
    x: torch.Tensor,
    spec: QuantSpec,
    calib: CalibSpec,
    errors: ErrorsFn = diffs_errors,
    value_range_: tuple[float, float] | None = None,
) -> int | None:
    """The fix position of one tensor by `calib.method` (see CalibSpec); None for specs without one (float
    data types, float steps, per-channel grids: those come from `scales` and `channel_fix_pos`)."""
    if not spec.is_int or spec.float_scale or spec.per_channel:
        return None
    if calib.method == "maxmin":
        return fix_pos_maxmin(x, spec.bitwidth, value_range_)
    if calib.method == "percentile":
        return fix_pos_percentile(x, spec.bitwidth, calib.percentage)
    scope = spec.bitwidth if calib.method == "mse" else DIFFS_SCOPE
    return fix_pos_diffs(x, spec, scope, errors, value_range_)

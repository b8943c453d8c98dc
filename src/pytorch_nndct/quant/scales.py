"""Pure float-step numerics (CPU/GPU targets): the step and zero point of a tensor by each calibration method,
and the statistic over calibration batches. Observers collect; these functions decide (DESIGN rule 3).

- "maxmin": the range itself. Symmetric signed: max|x| / qmax; unsigned: max(x, 0) / qmax; asymmetric:
  (max' - min') / (qmax - qmin) with min' = min(x, 0), max' = max(x, 0) (the range always holds zero, so the
  zero point lies on the integer grid), zero point = qmin + round(-min' / s).
- "percentile", "mse", "entropy": an amax found on a 2048-bin histogram of |x| over [0, max|x|], as the
  original does: the `percentage` percentile (the first bin edge whose cumulative share reaches it); the bin
  centre from bin 1536 on, every 16th, with the smallest count-weighted squared quantization error; the bin
  edge from 1536 on, every 16th, with the smallest KL divergence between the histogram (outliers added to
  its last bin, the first bin's count replaced by the second's) and its quantized version (the last minimum).
- Steps are rounded to float32 (the type ONNX stores); an empty range gets MIN_SCALE (2^-18, the original's).
- Over batches: the max, mean or median of the per-batch steps ("modal": the most frequent one), and the
  most frequent zero point (the smallest among ties).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

import torch

from .primitives import channel_fix_pos, channel_steps, fake_cast, fake_quantize, round_, value_range
from .spec import CalibSpec, QuantSpec

__all__ = [
    "HISTOGRAM_BINS",
    "MIN_SCALE",
    "SEARCH_START",
    "SEARCH_STRIDE",
    "batch_scale",
    "channel_scales",
    "histogram_amax",
    "param_grid",
    "quantize_param",
    "range_scale",
    "scale_statistic",
    "to_float32",
]

MIN_SCALE = 2.0**-18
HISTOGRAM_BINS = 2048
SEARCH_START = 1536  # mse and entropy try amax from this bin on ...
SEARCH_STRIDE = 16  # ... every this many bins


def to_float32(value: float) -> float:
    """The float32 value nearest to `value`, as a Python float."""
    return float(torch.tensor(value, dtype=torch.float64).float())


def range_scale(lo: float, hi: float, spec: QuantSpec) -> tuple[float, int]:
    """(step, zero point) of a per-tensor float grid that covers [lo, hi] (see the module docstring)."""
    if spec.symmetric:
        amax = max(abs(lo), abs(hi)) if spec.signed else max(hi, 0.0)
        scale = to_float32(float(torch.tensor(amax, dtype=torch.float32) / spec.qmax))
        return (scale if scale > 0 else MIN_SCALE), 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = to_float32(float(torch.tensor(hi - lo, dtype=torch.float32) / (spec.qmax - spec.qmin)))
    if scale <= 0:
        return MIN_SCALE, spec.qmin
    zero_point = spec.qmin + round(-lo / scale)
    return scale, min(max(zero_point, spec.qmin), spec.qmax)


def channel_scales(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Float-step parameters by "maxmin" (the only per-channel method): (steps, zero points) per slice along
    spec.axis, or one for the tensor, shaped to broadcast against x (steps float32, zero points int64).
    Symmetric signed grids give the steps of primitives.float_scales (an all-zero slice gets 1)."""
    x = x.detach().float()
    dims = [d for d in range(x.dim()) if not spec.per_channel or d != spec.axis % x.dim()]
    if not dims:
        lo = hi = x
    else:
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    if spec.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs()) if spec.signed else hi.clamp(min=0)
        s = amax / spec.qmax
        return torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s, dtype=torch.int64)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = (hi - lo) / (spec.qmax - spec.qmin)
    s = torch.where(s > 0, s, torch.ones_like(s))
    zp = (spec.qmin + torch.round(-lo.double() / s.double())).clamp(spec.qmin, spec.qmax).long()
    return s, zp


def _histogram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, edges) of |x| in HISTOGRAM_BINS bins over [0, max|x|], on the CPU in float64 / float32."""
    a = x.detach().float().abs().reshape(-1)
    amax = a.max()
    counts = torch.histc(a, bins=HISTOGRAM_BINS, min=0.0, max=float(amax)).double().cpu()
    edges = torch.linspace(0.0, float(amax), HISTOGRAM_BINS + 1, dtype=torch.float32)
    return counts, edges


def _percentile_amax(counts: torch.Tensor, edges: torch.Tensor, percentage: float) -> float:
    cdf = torch.cumsum(counts / counts.sum(), dim=0)
    idx = int(torch.searchsorted(cdf, torch.tensor([percentage / 100.0], dtype=torch.float64))[0])
    return float(edges[min(idx, HISTOGRAM_BINS)])


def _mse_amax(counts: torch.Tensor, edges: torch.Tensor, spec: QuantSpec) -> float:
    centers = (edges[1:] + edges[:-1]) / 2
    picks = torch.arange(SEARCH_START, HISTOGRAM_BINS, SEARCH_STRIDE)
    amax = centers[picks].unsqueeze(1)
    s = amax / spec.qmax
    fq = round_(centers / s, spec.round_mode).clamp_(spec.qmin, spec.qmax) * s
    mse = ((fq - centers).double() ** 2 * counts).mean(dim=1)
    return float(centers[picks[int(torch.argmin(mse))]])


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) of two count vectors, each normalized (scipy.stats.entropy's definition)."""
    p, q = p / p.sum(), q / q.sum()
    inf = torch.full_like(p, float("inf"))
    terms = torch.where(p > 0, torch.where(q > 0, p * torch.log(p / q), inf), torch.zeros_like(p))
    return float(terms.sum())


def _entropy_amax(counts: torch.Tensor, edges: torch.Tensor, spec: QuantSpec) -> float:
    bins = counts.clone()
    bins[0] = bins[1]
    levels = 1 << (spec.bitwidth - (1 if spec.signed else 0))
    best_i, best = SEARCH_START, float("inf")
    for i in range(SEARCH_START, HISTOGRAM_BINS + 1, SEARCH_STRIDE):
        ref = bins[:i].clone()
        ref[-1] += bins[i:].sum()
        used = bins[:i] > 0
        level = torch.arange(i, dtype=torch.int64) * levels // i  # the quantized bin each histogram bin falls in
        sums = torch.zeros(levels, dtype=torch.float64).index_add_(0, level[used], bins[:i][used])
        n = torch.zeros(levels, dtype=torch.float64).index_add_(0, level[used], torch.ones_like(bins[:i][used]))
        expanded = torch.where(used, sums[level] / n[level].clamp(min=1), torch.zeros_like(ref))
        divergence = _kl(ref, expanded)
        if divergence <= best:  # the last minimum wins
            best_i, best = i, divergence
    return float(edges[best_i])


def histogram_amax(x: torch.Tensor, spec: QuantSpec, method: str, percentage: float = 99.99) -> float:
    """The amax of "percentile", "mse" or "entropy" for one tensor (0.0 for an all-zero tensor)."""
    counts, edges = _histogram(x)
    if float(edges[-1]) <= 0 or counts.sum() <= 0:
        return 0.0
    if method == "percentile":
        return _percentile_amax(counts, edges, percentage)
    if method == "mse":
        return _mse_amax(counts, edges, spec)
    if method == "entropy":
        return _entropy_amax(counts, edges, spec)
    raise ValueError(f"unknown histogram method {method!r}")


def batch_scale(
    x: torch.Tensor, spec: QuantSpec, calib: CalibSpec, value_range_: tuple[float, float] | None = None
) -> tuple[float, int]:
    """(step, zero point) of one tensor or calibration batch by `calib.method` (per tensor)."""
    if calib.method in ("percentile", "mse", "entropy") and spec.symmetric:
        amax = histogram_amax(x, spec, calib.method, calib.percentage)
        return range_scale(-amax if spec.signed else 0.0, amax, spec)
    lo, hi = value_range_ or value_range(x)
    return range_scale(lo, hi, spec)


def scale_statistic(scales: Sequence[float], zero_points: Sequence[int], statistic: str) -> tuple[float, int]:
    """The step and zero point kept over calibration batches (see the module docstring)."""
    if not scales:
        raise ValueError("no calibration batches observed")
    if statistic == "max":
        scale = max(scales)
    elif statistic == "mean":
        scale = to_float32(statistics.fmean(scales))
    elif statistic == "median":
        scale = to_float32(statistics.median(scales))
    elif statistic == "modal":
        scale = _mode(scales)
    else:
        raise ValueError(f"unknown calibration statistic {statistic!r}")
    return scale, _mode(zero_points)


def _mode(values: Sequence) -> object:
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def param_grid(x: torch.Tensor, spec: QuantSpec, calib: CalibSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of a parameter whose step comes from the tensor itself (spec.derived): (steps, zero points)
    shaped to broadcast against x. Per-channel power-of-two: 2^-fp of each slice (channel_fix_pos); float
    steps: by maxmin (channel_scales), or per tensor by percentile, mse or entropy (batch_scale)."""
    if not spec.float_scale:
        fix_pos = channel_fix_pos(x, spec, calib)
        steps = channel_steps(fix_pos, spec, x.dim())
        return steps, torch.zeros_like(steps, dtype=torch.int64)
    if spec.per_channel or calib.method not in ("percentile", "mse", "entropy") or not spec.symmetric:
        return channel_scales(x, spec)
    scale, zero_point = batch_scale(x, spec, calib)
    shape = [1] * x.dim()
    return torch.full(shape, scale, dtype=torch.float32), torch.full(shape, zero_point, dtype=torch.int64)


def quantize_param(x: torch.Tensor, spec: QuantSpec, calib: CalibSpec) -> torch.Tensor:
    """A parameter as the quantized model uses it: rounded to its float data type, fake-quantized on the grid
    derived from it (param_grid), or on its fix position."""
    if not spec.is_int:
        return fake_cast(x, spec.dtype)
    if spec.derived:
        return fake_quantize(x, spec, *param_grid(x, spec, calib))
    return fake_quantize(x, spec)

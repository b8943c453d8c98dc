"""Fused versions of the hot primitives, used by calibration and test mode.

`fake_quantize` and the five-candidate error sum of the "diffs" search are memory-bound chains of
element-wise ops; run eagerly they read each activation many times. Here they are compiled with
torch.compile (one fused loop per call, on CPU and GPU alike) and checked bit-exact against the eager
primitives in tests. The scale is passed as a tensor so one compiled kernel serves every fix position
and shape. If compilation is unavailable or fails, the eager primitives run instead (same results).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import primitives
from .spec import QuantSpec, RoundMode

__all__ = ["FusedOutput", "diffs_errors", "failed", "fake_quantize", "kernels_enabled"]

log = logging.getLogger("pytorch_nndct")

_ENABLED = {"value": True}
_ANNOUNCED = {"value": False}  # the compile notice is given once per process


def kernels_enabled(enabled: bool | None = None) -> bool:
    """Query, or switch, the use of compiled kernels (switching off runs the eager primitives)."""
    if enabled is not None:
        _ENABLED["value"] = bool(enabled)
    return _ENABLED["value"]


def _fq(x: torch.Tensor, scale: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor, mode: RoundMode) -> torch.Tensor:
    q = torch.minimum(torch.maximum(primitives.round_(x * scale, mode), qmin), qmax)
    return q / scale


def _candidate_errors(
    x: torch.Tensor, scales: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor, mode: RoundMode
) -> torch.Tensor:
    # x - q / s == (x * s - q) / s exactly (s a power of two), so the error is taken on the integer grid
    # and divided by s^2 once. Each element's error is exact in x's dtype; its square is summed in x's
    # dtype along a row (full-width vector lanes, relative error ~1e-6) and the row sums in float64. One
    # loop per candidate lets the compiler keep each in registers.
    sums = []
    for k in range(scales.shape[0]):
        y = x * scales[k]
        d = y - torch.minimum(torch.maximum(primitives.round_(y, mode), qmin), qmax)
        sums.append((d * d).sum(dim=1).to(torch.float64).sum())
    return torch.stack(sums) / scales.to(torch.float64) ** 2


def _errors(
    rows: torch.Tensor,
    scales: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    clamp_lo: torch.Tensor,
    clamp_hi: torch.Tensor,
    mode: RoundMode,
) -> torch.Tensor:
    """The candidates' errors of rows clamped to [clamp_lo, clamp_hi] (a ReLU/ReLU6 the output point
    applies itself; +-inf for none)."""
    x = torch.minimum(torch.maximum(rows, clamp_lo), clamp_hi)
    return _candidate_errors(x, scales, qmin, qmax, mode)


def _errors_fq(
    rows: torch.Tensor,
    scales: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    clamp_lo: torch.Tensor,
    clamp_hi: torch.Tensor,
    scale: torch.Tensor,
    mode: RoundMode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """_errors and, from the same read of x, fake_quantize(clamp(x)) at `scale`."""
    x = torch.minimum(torch.maximum(rows, clamp_lo), clamp_hi)
    return _candidate_errors(x, scales, qmin, qmax, mode), _fq(x, scale, qmin, qmax, mode)


class _Compiled:
    """One compiled kernel per (function, round mode). Each wrapper has its own code object, so the
    compiler's per-function cache never mixes modes; bounds and scales are tensors, so a new bit width or
    fix position does not recompile either."""

    def __init__(self, fn: Callable[..., torch.Tensor], mode: RoundMode) -> None:
        def kernel(x: torch.Tensor, *tensors: torch.Tensor) -> Any:
            return fn(x, *tensors, mode)

        # a distinct code object per mode: compile caches are kept per code object
        kernel.__code__ = kernel.__code__.replace(co_name=f"{fn.__name__}_{mode.name.lower()}")
        self.fn = kernel
        self.compiled: Any = None
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if not _ENABLED["value"] or self.failed:
            return self.fn(*args)
        if self.compiled is None:
            if not _ANNOUNCED["value"]:
                _ANNOUNCED["value"] = True
                log.warning(
                    "compiling the fused quantization kernels: the first batch takes longer (about 20 to 40 s on "
                    "a CPU, once per process); pytorch_nndct.quant.kernels.kernels_enabled(False) runs eager ops "
                    "instead (same results, slower batches)"
                )
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        try:
            with torch.no_grad():
                return self.compiled(*args)
        except Exception as exc:  # no compiler on this machine, an unsupported device ...
            self.failed = True
            log.warning("compiled quantization kernels unavailable (%s); using eager ops", exc)
            return self.fn(*args)


_FQ = {mode: _Compiled(_fq, mode) for mode in RoundMode}
_ERRORS = {mode: _Compiled(_errors, mode) for mode in RoundMode}
_ERRORS_FQ = {mode: _Compiled(_errors_fq, mode) for mode in RoundMode}
_ROW = 2048  # at most this many elements per float32 partial sum of the error kernel
_MIN_ROW = 64
_SCALES: dict[tuple, torch.Tensor] = {}


def _scales(fix_positions: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (fix_positions, dtype, device)
    t = _SCALES.get(key)
    if t is None:
        t = _SCALES[key] = torch.tensor([math.ldexp(1.0, fp) for fp in fix_positions], dtype=dtype, device=device)
    return t


def _tensors(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Scalars as 0-d tensors (cached): kernel arguments that do not trigger recompiles."""
    key = (("values", *values), dtype, device)
    t = _SCALES.get(key)
    if t is None:
        t = _SCALES[key] = torch.tensor(values, dtype=dtype, device=device)
    return tuple(t.unbind())


def _bounds(
    spec: QuantSpec, dtype: torch.dtype, device: torch.device, bounds: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = bounds or (spec.qmin, spec.qmax)
    return _tensors((float(lo), float(hi)), dtype, device)


def failed() -> bool:
    """True if a compiled kernel failed and the eager primitives are used instead."""
    return any(k.failed for k in (*_FQ.values(), *_ERRORS.values(), *_ERRORS_FQ.values()))


def fake_quantize(x: torch.Tensor, spec: QuantSpec, bounds: tuple[int, int] | None = None) -> torch.Tensor:
    """Same result as primitives.fake_quantize, in one fused pass.

    `bounds` narrows the integer range [qmin, qmax]: fake_quantize(relu6(x)) is fake_quantize(x) with
    bounds (0, 6 * 2^fp) when 6 * 2^fp is an integer (rounding is monotone and 0 and 6 are on the grid).
    """
    if x.numel() < 4096 or (torch.is_grad_enabled() and x.requires_grad):
        if bounds is not None:
            x = x.clamp(bounds[0] * 2.0**-spec.fix_pos, bounds[1] * 2.0**-spec.fix_pos)
        return primitives.fake_quantize(x, spec)
    scale = _scales((spec.fix_pos,), x.dtype, x.device)[0]
    lo, hi = _bounds(spec, x.dtype, x.device, bounds)
    # always 1-D, so one compiled kernel serves tensors of every rank (no recompiles per shape)
    return _FQ[spec.round_mode](x.reshape(-1), scale, lo, hi).view(x.shape)


@dataclass
class FusedOutput:
    """Asks diffs_errors for fake_quantize(clamp(x)) at `fix_pos` from the same read of x; `value` is set
    (flat) when it could be computed that way."""

    fix_pos: int
    value: torch.Tensor | None = None


def _rows(flat: torch.Tensor) -> torch.Tensor | None:
    """flat as rows of up to _ROW elements (a power of two dividing its size), or None if too short."""
    n = flat.numel()
    width = min(_ROW, n & -n)
    return flat.view(-1, width) if width >= _MIN_ROW and n >= 2 * width else None


def diffs_errors(
    x: torch.Tensor,
    spec: QuantSpec,
    candidates: list[int],
    clamp: tuple[float, float] | None = None,
    output: FusedOutput | None = None,
) -> torch.Tensor:
    """Same result as primitives.diffs_errors up to summation order and precision (relative ~1e-6), fused.

    `clamp` (lo, hi): the errors of x.clamp(lo, hi), without writing the clamped tensor. `output`: also
    fake-quantize (the clamped) x in the same pass, when x's size splits into rows (see _rows); other
    sizes go through the compiled kernel in rows of _ROW and through the eager primitive for the rest.
    """
    flat = x.detach().reshape(-1)
    rows = _rows(flat) if flat.numel() >= 4096 else None
    bulk = flat.numel() // _ROW * _ROW
    if rows is None and bulk < 2 * _ROW:
        return primitives.diffs_errors(flat if clamp is None else flat.clamp(*clamp), spec, candidates)
    scales = _scales(tuple(candidates), x.dtype, x.device)
    lo, hi = _bounds(spec, x.dtype, x.device)
    c_lo, c_hi = _tensors((-math.inf, math.inf) if clamp is None else clamp, x.dtype, x.device)
    if rows is not None:
        if output is None:
            return _ERRORS[spec.round_mode](rows, scales, lo, hi, c_lo, c_hi)
        scale = _scales((output.fix_pos,), x.dtype, x.device)[0]
        errors, out = _ERRORS_FQ[spec.round_mode](rows, scales, lo, hi, c_lo, c_hi, scale)
        output.value = out.view(-1)
        return errors
    total = _ERRORS[spec.round_mode](flat[:bulk].view(-1, _ROW), scales, lo, hi, c_lo, c_hi)
    tail = flat[bulk:] if clamp is None else flat[bulk:].clamp(*clamp)
    return total + primitives.diffs_errors(tail, spec, candidates)

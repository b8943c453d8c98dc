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
from typing import Any

import torch

from . import primitives
from .spec import QuantSpec, RoundMode

__all__ = ["diffs_errors", "fake_quantize", "kernels_enabled"]

log = logging.getLogger("pytorch_nndct")

_ENABLED = {"value": True}


def kernels_enabled(enabled: bool | None = None) -> bool:
    """Query, or switch, the use of compiled kernels (switching off runs the eager primitives)."""
    if enabled is not None:
        _ENABLED["value"] = bool(enabled)
    return _ENABLED["value"]


def _fq(x: torch.Tensor, scale: torch.Tensor, qmin: float, qmax: float, mode: RoundMode) -> torch.Tensor:
    q = primitives.round_(x * scale, mode).clamp(qmin, qmax)
    return q / scale


def _errors(x: torch.Tensor, scales: torch.Tensor, qmin: float, qmax: float, mode: RoundMode) -> torch.Tensor:
    # x - q / s == (x * s - q) / s exactly (s a power of two), so the error is taken on the integer grid
    # and divided by s^2 once; one loop per candidate lets the compiler keep each in registers.
    sums = []
    for k in range(scales.shape[0]):
        y = x * scales[k]
        d = (y - primitives.round_(y, mode).clamp(qmin, qmax)).to(torch.float64)
        sums.append((d * d).sum())
    return torch.stack(sums) / scales.to(torch.float64) ** 2


class _Compiled:
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.compiled: Any = None
        self.failed = False

    def __call__(self, *args: Any) -> torch.Tensor:
        if not _ENABLED["value"] or self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        try:
            return self.compiled(*args)
        except Exception as exc:  # no compiler on this machine, an unsupported device ...
            self.failed = True
            log.warning("pytorch_nndct: compiled quantization kernels unavailable (%s); using eager ops", exc)
            return self.fn(*args)


_FQ = _Compiled(_fq)
_ERRORS = _Compiled(_errors)
_CHUNK = 1 << 24
_SCALES: dict[tuple, torch.Tensor] = {}


def _scales(fix_positions: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (fix_positions, dtype, device)
    t = _SCALES.get(key)
    if t is None:
        t = _SCALES[key] = torch.tensor([math.ldexp(1.0, fp) for fp in fix_positions], dtype=dtype, device=device)
    return t


def fake_quantize(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Same result as primitives.fake_quantize, in one fused pass."""
    if x.numel() < 4096 or (torch.is_grad_enabled() and x.requires_grad):
        return primitives.fake_quantize(x, spec)
    scale = _scales((spec.fix_pos,), x.dtype, x.device)[0]
    # always 1-D, so one compiled kernel serves tensors of every rank (no recompiles per shape)
    flat = _FQ(x.reshape(-1), scale, float(spec.qmin), float(spec.qmax), spec.round_mode)
    return flat.view(x.shape)


def diffs_errors(x: torch.Tensor, spec: QuantSpec, candidates: list[int]) -> torch.Tensor:
    """Same result as primitives.diffs_errors (up to float64 summation order), fused."""
    if x.numel() < 4096:
        return primitives.diffs_errors(x, spec, candidates)
    flat = x.detach().reshape(-1)
    scales = _scales(tuple(candidates), x.dtype, x.device)
    total = torch.zeros(len(candidates), dtype=torch.float64, device=x.device)
    for start in range(0, flat.numel(), _CHUNK):
        total += _ERRORS(flat[start : start + _CHUNK], scales, float(spec.qmin), float(spec.qmax), spec.round_mode)
    return total

"""Fix-point primitives against an independent NumPy reference (float64), plus properties and SPEC 2.1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytorch_nndct.quant.primitives import (
    avgpool_factor,
    fake_quantize,
    fix_pos_diffs,
    fix_pos_maxmin,
    quantize,
    round_,
)
from pytorch_nndct.quant.spec import QuantSpec, RoundMode


# ------------------------------------------------------------------ an independent reference in NumPy
def np_round(v: np.ndarray, mode: RoundMode) -> np.ndarray:
    v = v.astype(np.float64)
    if mode is RoundMode.HALF_UP:
        return np.floor(v + 0.5)
    if mode is RoundMode.HALF_DOWN:
        return np.ceil(v - 0.5)
    if mode is RoundMode.HALF_AWAY:
        return np.sign(v) * np.floor(np.abs(v) + 0.5)
    if mode is RoundMode.HALF_EVEN:
        return np.round(v)
    if mode is RoundMode.FLOOR:
        return np.floor(v)
    return np.ceil(v)


def np_quantize(x: np.ndarray, bw: int, fp: int, mode: RoundMode) -> np.ndarray:
    return np.clip(np_round(x.astype(np.float64) * 2.0**fp, mode), -(2 ** (bw - 1)), 2 ** (bw - 1) - 1)


def np_diffs(x: np.ndarray, bw: int, mode: RoundMode, scope: int = 5) -> int:
    x64 = x.astype(np.float64)
    lo, hi = x64.min(), x64.max()
    step = max(lo / (-(2 ** (bw - 1)) - 0.5), hi / (2 ** (bw - 1) - 0.5))
    if step <= 0:
        return min(18, 12 if bw <= 8 else 15)
    fp0 = math.floor(math.log2(1 / step))
    errs = []
    for fp in range(fp0, fp0 + scope):
        fq = (np_quantize(x, bw, fp, mode) * 2.0**-fp).astype(np.float32)
        errs.append(np.sum((x - fq).astype(np.float64) ** 2))
    best = fp0 + int(np.argmin(errs))  # first minimum: the smaller fp wins a tie
    return min(best, 12 if bw <= 8 else 15)


MODES = list(RoundMode)
TIES = torch.tensor([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, -0.49999997, 2.4999998, -126.5])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_round_bit_exact_with_ties(mode):
    x = torch.cat([TIES, torch.randn(10000) * 50, torch.arange(-40, 40) / 4])
    assert np.array_equal(round_(x, mode).numpy(), np_round(x.numpy(), mode).astype(np.float32))


def test_round_tie_rules_match_spec():
    x = torch.tensor([2.5, -2.5])
    assert round_(x, RoundMode.HALF_AWAY).tolist() == [3.0, -3.0]
    assert round_(x, RoundMode.HALF_UP).tolist() == [3.0, -2.0]
    assert round_(x, RoundMode.HALF_EVEN).tolist() == [2.0, -2.0]
    assert round_(x, RoundMode.HALF_DOWN).tolist() == [2.0, -3.0]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("bw,fp", [(8, 5), (8, -2), (4, 1), (16, 12)])
def test_quantize_bit_exact(mode, bw, fp):
    torch.manual_seed(bw * 100 + fp)
    x = torch.cat([torch.randn(5000) * 2.0 ** (bw - 1 - fp) / 2, TIES * 2.0**-fp])
    spec = QuantSpec(bw, True, mode, fp)
    ref = np_quantize(x.numpy(), bw, fp, mode)
    assert np.array_equal(quantize(x, spec).numpy(), ref.astype(np.float32))
    assert np.array_equal(fake_quantize(x, spec).numpy(), (ref * 2.0**-fp).astype(np.float32))


@pytest.mark.parametrize("mode", [RoundMode.HALF_UP, RoundMode.HALF_AWAY, RoundMode.HALF_EVEN])
@pytest.mark.parametrize("bw", [4, 8, 16])
def test_diffs_matches_reference(mode, bw):
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2000, generator=g) * float(torch.rand(1, generator=g)) * 10
        if seed % 3 == 0:
            x = torch.relu(x)
        assert fix_pos_diffs(x, QuantSpec(bw, True, mode)) == np_diffs(x.numpy(), bw, mode), seed


def test_spec_worked_example():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, generator=g) * 0.05
    w[17] = 0.72
    assert fix_pos_maxmin(w, 8) == 7
    assert fix_pos_diffs(w, QuantSpec(8, True, RoundMode.HALF_AWAY)) == 7
    a = torch.relu(torch.randn(100000, generator=g))
    a = a * (4.4 / a.max())
    assert fix_pos_maxmin(a, 8) == 4
    assert fix_pos_diffs(a, QuantSpec(8, True, RoundMode.HALF_UP)) == 5


def test_all_zero_tensor_and_caps():
    zeros = torch.zeros(10)
    assert fix_pos_diffs(zeros, QuantSpec(8)) == 12
    assert fix_pos_diffs(zeros, QuantSpec(16)) == 15
    assert fix_pos_maxmin(torch.full((4,), 1e-9), 8) == 12


def test_avgpool_factors_from_spec():
    assert [avgpool_factor(k * k) for k in (3, 5, 6, 7, 14)] == [(7, 6), (10, 8), (7, 8), (21, 10), (21, 12)]
    assert avgpool_factor(4) == (1, 2)
    m, s = avgpool_factor(10)
    assert abs(m / 2**s - 0.1) <= 1 / 2**s


# ------------------------------------------------------------------ properties
floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.integers(2, 16), st.integers(-8, 14), st.sampled_from(MODES))
def test_quantize_range_and_half_lsb_error(values, bw, fp, mode):
    x = torch.tensor(values, dtype=torch.float32)
    spec = QuantSpec(bw, True, mode, fp)
    q = quantize(x, spec)
    assert bool((q >= spec.qmin).all() and (q <= spec.qmax).all())
    assert torch.equal(q, torch.round(q))
    lsb = 2.0**-fp
    inside = (x >= spec.qmin * lsb) & (x <= spec.qmax * lsb)
    err = (fake_quantize(x, spec) - x).abs()[inside]
    bound = 0.5 * lsb if mode not in (RoundMode.FLOOR, RoundMode.CEIL) else lsb
    assert bool((err <= bound).all())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.015625, 100.0, width=32), min_size=2, max_size=64), st.floats(1.01, 20))
def test_fix_pos_monotone_in_max(values, factor):
    x = torch.tensor(values)
    bigger = x.clone()
    bigger[int(torch.argmax(x))] *= factor
    assert fix_pos_maxmin(bigger, 8) <= fix_pos_maxmin(x, 8)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-100.0, 100.0, width=32), min_size=2, max_size=64), st.integers(-3, 3))
def test_diffs_shifts_with_power_of_two_scale(values, k):
    x = torch.tensor(values)
    if not x.any():
        return
    spec = QuantSpec(8, True, RoundMode.HALF_UP)
    base = fix_pos_diffs(x, spec)
    scaled = fix_pos_diffs(x * 2.0**k, spec)
    assert scaled == min(base - k, 12) or base == 12


@pytest.mark.parametrize("size", [7, 14, 56, 112])
def test_global_average_pool_is_the_dpu_window_sum_times_its_factor(size):
    """Global adaptive pooling sums the plane directly (faster than a window of the plane's size); on the
    fix-point grid the sum is exact, so it equals the windowed pooling bit for bit."""
    from pytorch_nndct.ir.ops import Op
    from pytorch_nndct.quant.dpu import DPU_FUNCTIONS

    torch.manual_seed(size)
    x = torch.randint(-128, 128, (2, 5, size, size)).float() * 2.0**-6
    m, s = avgpool_factor(size * size)
    windowed = torch.nn.functional.avg_pool2d(x, size, size, divisor_override=1) * (m / 2**s)
    out = DPU_FUNCTIONS[Op.ADAPTIVE_AVG_POOL2D](x, 1)
    assert out.shape == (2, 5, 1, 1)
    assert torch.equal(out, windowed)
    assert torch.equal(DPU_FUNCTIONS[Op.ADAPTIVE_AVG_POOL2D](x, (1, 1)), windowed)

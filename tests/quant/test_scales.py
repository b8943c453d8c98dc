"""Float steps, zero points, float data types and per-channel grids against independent NumPy references."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytorch_nndct.quant.primitives import (
    channel_fix_pos,
    fake_cast,
    fake_quantize,
    fix_pos_diffs,
    fix_pos_maxmin,
    float_scales,
    quantize,
)
from pytorch_nndct.quant.scales import (
    HISTOGRAM_BINS,
    MIN_SCALE,
    SEARCH_START,
    SEARCH_STRIDE,
    batch_scale,
    channel_scales,
    histogram_amax,
    param_grid,
    range_scale,
    scale_statistic,
)
from pytorch_nndct.quant.spec import CalibSpec, DataType, QuantSpec, RoundMode

F32 = np.float32
SYM = QuantSpec(8, float_scale=True, round_mode=RoundMode.HALF_EVEN)
UNSIGNED = QuantSpec(8, signed=False, float_scale=True, round_mode=RoundMode.HALF_EVEN)
ASYM = QuantSpec(8, symmetric=False, float_scale=True, round_mode=RoundMode.HALF_EVEN)


def np_fake(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear -> DequantizeLinear in float32: saturate(round_half_even(x / s) + zp), (q - zp) * s."""
    q = np.clip(np.rint(x.astype(F32) / F32(scale)) + zp, qmin, qmax)
    return ((q - zp).astype(F32) * F32(scale)).astype(F32)


def test_ranges_of_the_integer_grids():
    assert (SYM.qmin, SYM.qmax) == (-128, 127)
    assert (QuantSpec(8, narrow_range=True).qmin, QuantSpec(8, narrow_range=True).qmax) == (-127, 127)
    assert (UNSIGNED.qmin, UNSIGNED.qmax) == (0, 255)
    assert (ASYM.qmin, ASYM.qmax) == (0, 255)  # the original: asymmetric grids use [0, 2^b - 1]
    assert (QuantSpec(4, symmetric=False, narrow_range=True).qmin, QuantSpec(4, symmetric=False).qmax) == (0, 15)


def test_range_scale_symmetric_unsigned_asymmetric():
    s, zp = range_scale(-3.0, 5.0, SYM)
    assert (s, zp) == (float(F32(5.0) / F32(127)), 0)
    s, zp = range_scale(-3.0, 5.0, UNSIGNED)
    assert (s, zp) == (float(F32(5.0) / F32(255)), 0)
    s, zp = range_scale(-3.0, 5.0, ASYM)
    assert s == float(F32(8.0) / F32(255)) and zp == round(3.0 / s)
    s, zp = range_scale(1.0, 5.0, ASYM)  # the range always holds zero, so zero is on the grid
    assert zp == 0 and s == float(F32(5.0) / F32(255))
    assert range_scale(0.0, 0.0, SYM) == (MIN_SCALE, 0)
    assert float(F32(s)) == s  # steps are float32 values (ONNX stores float32)


@pytest.mark.parametrize("spec", [SYM, UNSIGNED, ASYM, QuantSpec(6, narrow_range=True, float_scale=True,
                                                                  round_mode=RoundMode.HALF_EVEN)])  # fmt: skip
def test_float_step_fake_quantize_is_onnx_quantize_dequantize(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g) * 3
    s, zp = batch_scale(x, spec, CalibSpec("maxmin"))
    ties = torch.tensor([0.5, 1.5, 2.5, -2.5, 126.5]) * s  # exact ties (s times a half-integer, in float32)
    x = torch.cat([x, ties])
    got = fake_quantize(x, spec, s, zp).numpy()
    np.testing.assert_array_equal(got, np_fake(x.numpy(), s, zp, spec.qmin, spec.qmax))
    q = quantize(x, spec, s, zp)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax and q.max() == spec.qmax


def test_spec_scale_is_used_and_params_default_to_max_abs():
    x = torch.tensor([-1.0, 0.25, 2.0])
    spec = SYM.with_scale(0.5, 0)
    assert fake_quantize(x, spec).tolist() == [-1.0, 0.0, 2.0]
    assert torch.equal(fake_quantize(x, SYM), fake_quantize(x, SYM, float_scales(x, SYM)))


def test_wide_bias_grid_is_exact_in_float64():
    b = torch.tensor([0.123456789, -3.3, 7.75, 1e-6], dtype=torch.float32)
    spec = QuantSpec(32, float_scale=True, round_mode=RoundMode.HALF_EVEN)
    s, zp = channel_scales(b, spec)
    q = quantize(b, spec, s, zp)
    expect = np.clip(np.rint(b.double().numpy() / s.double().numpy()), -(2**31), 2**31 - 1)
    np.testing.assert_array_equal(q.double().numpy(), expect)
    assert q.abs().max() == 2**31 - 1 and (fake_quantize(b, spec, s, zp) - b).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [DataType.BFLOAT16, DataType.FLOAT16, DataType.FLOAT32])
def test_fake_cast_rounds_to_the_data_type(dtype):
    x = torch.randn(1000) * 100
    torch_type = {DataType.BFLOAT16: torch.bfloat16, DataType.FLOAT16: torch.float16}.get(dtype, torch.float32)
    assert torch.equal(fake_cast(x, dtype), x.to(torch_type).float())
    assert torch.equal(fake_quantize(x, QuantSpec(dtype=dtype)), fake_cast(x, dtype))
    if dtype is DataType.BFLOAT16:  # round to nearest even on the 8-bit mantissa
        assert fake_cast(torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8]), dtype).tolist() == [1.0, 1.0 + 2**-6]


# ------------------------------------------------------------------ histogram methods, by NumPy loops
def np_histogram(x: np.ndarray):
    a = np.abs(x.astype(F32))
    counts = torch.histc(torch.from_numpy(a), bins=HISTOGRAM_BINS, min=0.0, max=float(a.max())).double().numpy()
    edges = np.linspace(0.0, float(a.max()), HISTOGRAM_BINS + 1).astype(F32)
    return counts, edges


def np_percentile(x, percentage):
    counts, edges = np_histogram(x)
    cdf = np.cumsum(counts / counts.sum())
    return float(edges[np.searchsorted(cdf, percentage / 100)])


def np_mse(x, qmax):
    counts, edges = np_histogram(x)
    centers = (edges[1:] + edges[:-1]) / 2
    best, arg = None, None
    for i in range(SEARCH_START, len(centers), SEARCH_STRIDE):
        s = F32(centers[i] / F32(qmax))
        fq = np.clip(np.rint(centers / s), -qmax - 1, qmax) * s
        mse = np.mean((fq.astype(np.float64) - centers) ** 2 * counts)
        if best is None or mse < best:
            best, arg = mse, i
    return float(centers[arg])


def np_entropy(x, levels):
    counts, edges = np_histogram(x)
    bins = counts.copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(SEARCH_START, len(bins) + 1, SEARCH_STRIDE):
        bucket = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        bucket[bins[:i] == 0] = -1
        merged = np.zeros(levels)
        members = np.zeros(levels)
        for j, b in enumerate(bucket):
            if b >= 0:
                merged[b] += bins[j]
                members[b] += 1
        q = np.array([merged[b] / members[b] if b >= 0 else 0.0 for b in bucket])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, np.where(q > 0, p * np.log(p / q), np.inf), 0.0)
        divergences.append(terms.sum())
    divergences = np.array(divergences)
    last = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[SEARCH_START + last * SEARCH_STRIDE])


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_methods_match_loop_references(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(20000, generator=g), torch.randn(20, generator=g) * 12])
    assert histogram_amax(x, SYM, "percentile", 99.9) == np_percentile(x.numpy(), 99.9)
    assert histogram_amax(x, SYM, "mse") == np_mse(x.numpy(), 127)
    assert histogram_amax(x, SYM, "entropy") == np_entropy(x.numpy(), 128)
    assert histogram_amax(torch.relu(x), UNSIGNED, "entropy") == np_entropy(torch.relu(x).numpy(), 256)
    maxabs = float(x.abs().max())
    for method in ("percentile", "mse"):  # they clip the outliers (entropy only searches 75%..100% of max|x|)
        assert 0 < histogram_amax(x, SYM, method, 99.9) < maxabs
    assert 0.75 * maxabs <= histogram_amax(x, SYM, "entropy") <= maxabs
    assert histogram_amax(torch.zeros(10), SYM, "mse") == 0.0


def test_batch_scale_per_method():
    x = torch.cat([torch.randn(5000), torch.tensor([30.0])])
    s_max, _ = batch_scale(x, SYM, CalibSpec("maxmin"))
    assert s_max == float(F32(30.0) / F32(127))
    for method in ("percentile", "mse", "entropy"):
        s, zp = batch_scale(x, SYM, CalibSpec(method, "max", 99.9))
        assert s == float(F32(histogram_amax(x, SYM, method, 99.9)) / F32(127)) and zp == 0 and s <= s_max


def test_statistics_over_batches():
    scales, zps = [0.5, 0.25, 0.25, 1.0], [3, 4, 4, 3]
    assert scale_statistic(scales, zps, "max") == (1.0, 3)  # zero points: the most frequent, smallest on a tie
    assert scale_statistic(scales, zps, "mean") == (float(F32(statistics.fmean(scales))), 3)
    assert scale_statistic(scales, zps, "median") == (0.375, 3)
    assert scale_statistic(scales, [1, 2, 2, 2], "modal") == (0.25, 2)
    with pytest.raises(ValueError):
        scale_statistic([], [], "max")


# ------------------------------------------------------------------ per-channel grids
@pytest.mark.parametrize("mode", [RoundMode.HALF_AWAY, RoundMode.HALF_EVEN])
@pytest.mark.parametrize("method", ["diffs", "maxmin"])
def test_channel_fix_pos_is_fix_pos_of_each_slice(mode, method):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 3, 3, 3, generator=g) * torch.logspace(-3, 1, 16).reshape(16, 1, 1, 1)
    w[5] = 0
    spec = QuantSpec(8, True, mode, per_channel=True)
    got = channel_fix_pos(w, spec, CalibSpec(method))
    scope = 5 if method == "diffs" else 1
    expect = [fix_pos_diffs(w[c], spec, scope) if scope > 1 else fix_pos_maxmin(w[c], 8) for c in range(16)]
    assert got.tolist() == expect and got[5] == 12  # an all-zero channel: the capped all-zero fix position
    steps, zp = param_grid(w, spec, CalibSpec(method))
    fq = fake_quantize(w, spec, steps, zp)
    for c in range(16):  # each channel on its own power-of-two grid, as a per-tensor spec would put it
        assert torch.equal(fq[c], fake_quantize(w[c], spec.with_fix_pos(expect[c])))


def test_per_channel_asymmetric_float_grid():
    w = torch.stack([torch.linspace(-1, 3, 50), torch.linspace(0.5, 2, 50), torch.zeros(50)])
    spec = QuantSpec(8, symmetric=False, float_scale=True, per_channel=True, round_mode=RoundMode.HALF_EVEN)
    s, zp = channel_scales(w, spec)
    assert s.shape == (3, 1) and zp.tolist() == [[round(1 / float(s[0]))], [0], [0]]
    fq = fake_quantize(w, spec, s, zp)
    assert ((fq - w).abs() <= s / 2 + 1e-7).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50, width=32), min_size=2, max_size=64),
    st.sampled_from([SYM, UNSIGNED, ASYM]),
)
def test_float_grid_error_within_half_step_inside_the_range(values, spec):
    x = torch.tensor(values, dtype=torch.float32)
    s, zp = batch_scale(x, spec, CalibSpec("maxmin"))
    fq = fake_quantize(x, spec, s, zp)
    inside = x >= 0 if not (spec.signed and spec.symmetric) and spec.symmetric else torch.ones_like(x, dtype=torch.bool)
    err = (fq - x).abs()[inside]
    assert (err <= s * 0.5 * (1 + 1e-5) + 1e-30).all() or math.isclose(float(err.max()), s / 2, rel_tol=1e-4)

"""TQT quantizer: forward bit-exact with post-training fake quantization, the paper's gradients (against an
independent reference and against finite differences), and the module's state (fix position, warmup,
enable/disable, freeze)."""

from __future__ import annotations

import math

import pytest
import torch

from pytorch_nndct.quant.primitives import fake_quantize
from pytorch_nndct.quant.spec import QuantSpec, RoundMode
from pytorch_nndct.quant.tqt import TQTQuantizer, tqt_fix_pos, tqt_quantize

MODES = (RoundMode.HALF_UP, RoundMode.HALF_AWAY)
LOG2_TS = (-3.0, -0.5, 0.0, 0.3, 1.0, 2.75, 5.0)


def _scale(log2_t: float, bits: int) -> float:
    return 2.0 ** math.ceil(log2_t) / 2.0 ** (bits - 1)


def _inputs(log2_t: float, bits: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random values over twice the range (so some clip), plus exact ties k + 0.5 steps in and out of range."""
    g = torch.Generator().manual_seed(seed)
    scale = _scale(log2_t, bits)
    half = 2 ** (bits - 1)
    rand = (torch.rand(300, generator=g, dtype=torch.float64) * 4 - 2) * half * scale
    ties = (torch.arange(-half - 3, half + 3, dtype=torch.float64) + 0.5) * scale
    return torch.cat([rand, ties, torch.zeros(1)]).to(dtype)


def _ref_round(s: torch.Tensor, mode: RoundMode) -> torch.Tensor:
    """Plain float64 rounding: floor(s + 0.5) (half up) or sign(s) floor(|s| + 0.5) (half away)."""
    if mode is RoundMode.HALF_UP:
        return torch.floor(s + 0.5)
    return torch.sign(s) * torch.floor(s.abs() + 0.5)


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("log2_t", LOG2_TS)
def test_forward_is_bit_exact_with_fake_quantize(mode, bits, log2_t):
    fp = bits - 1 - math.ceil(log2_t)
    spec = QuantSpec(bitwidth=bits, round_mode=mode, fix_pos=fp)
    t = torch.tensor([log2_t])
    for seed in range(5):
        x = _inputs(log2_t, bits, seed)
        y = tqt_quantize(x, t, bits, mode)
        assert torch.equal(y, fake_quantize(x, spec))
        # and an independent float64 formula, ties included
        scale = _scale(log2_t, bits)
        ref = _ref_round(x.double() / scale, mode).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
        assert torch.equal(y.double(), ref)


def test_ties_follow_the_tensor_kinds_rule():
    t = torch.tensor([0.0])  # 8 bit: scale 2^-7
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 2.5]) / 128
    up = tqt_quantize(x, t, 8, RoundMode.HALF_UP) * 128
    away = tqt_quantize(x, t, 8, RoundMode.HALF_AWAY) * 128
    assert up.tolist() == [-2.0, -1.0, 0.0, 1.0, 3.0]
    assert away.tolist() == [-3.0, -2.0, -1.0, 1.0, 3.0]


def test_scale_is_a_power_of_two_from_the_ceiling():
    x = torch.tensor([0.9, 1.2, 3.0])
    # log2 t = 0.2 -> ceil 1 -> threshold 2, 8 bit: range [-2, 2 - 2^-6]
    y = tqt_quantize(x, torch.tensor([0.2]), 8, RoundMode.HALF_UP)
    assert y.tolist() == [0.90625, 1.203125, 2 - 2**-6]
    assert tqt_fix_pos(0.2, 8) == 6 and tqt_fix_pos(1.0, 8) == 6 and tqt_fix_pos(-0.5, 4) == 3


def test_non_finite_or_wide_threshold_is_an_error():
    with pytest.raises(ValueError, match="finite"):
        tqt_quantize(torch.ones(3), torch.tensor([float("nan")]), 8, RoundMode.HALF_UP)
    with pytest.raises(ValueError, match="one element"):
        tqt_quantize(torch.ones(3), torch.zeros(2), 8, RoundMode.HALF_UP)


# ------------------------------------------------------------------ gradients
def _ref_threshold_grad(x: torch.Tensor, w: torch.Tensor, log2_t: float, bits: int, mode: RoundMode) -> float:
    """TQT eqs. 7-8 written out: sum over elements of w * scale * ln2 * m, m = r - s inside, qmin / qmax out."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = _scale(log2_t, bits)
    s = x.double() / scale
    r = _ref_round(s, mode)
    m = torch.where(r < qmin, torch.full_like(s, qmin), torch.where(r > qmax, torch.full_like(s, qmax), r - s))
    return float((w.double() * scale * math.log(2.0) * m).sum())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("log2_t", LOG2_TS)
def test_gradients_match_the_papers_formulas(mode, bits, log2_t):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for seed in range(3):
        x = _inputs(log2_t, bits, seed, torch.float64).requires_grad_(True)
        t = torch.tensor([log2_t], dtype=torch.float64, requires_grad=True)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        (tqt_quantize(x, t, bits, mode) * w).sum().backward()
        r = _ref_round(x.detach() / _scale(log2_t, bits), mode)
        mask = (r >= qmin) & (r <= qmax)
        assert 0 < int(mask.sum()) < x.numel()  # both kinds of element present
        assert torch.equal(x.grad, torch.where(mask, w, torch.zeros_like(w)))
        assert t.grad.shape == (1,) and t.grad.dtype == torch.float64
        ref = _ref_threshold_grad(x.detach(), w, log2_t, bits, mode)
        assert math.isclose(float(t.grad), ref, rel_tol=1e-9, abs_tol=1e-9)


def test_threshold_gradient_keeps_the_thresholds_dtype_and_shape():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.5], requires_grad=True)  # float32 threshold, float64 data
    tqt_quantize(x, t, 8, RoundMode.HALF_UP).sum().backward()
    assert t.grad.dtype == torch.float32 and t.grad.shape == (1,)
    assert x.grad.dtype == torch.float64


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("log2_t", (-1.0, 0.4, 2.0))
def test_threshold_gradient_is_the_derivative_of_the_straight_through_quantizer(mode, log2_t):
    """Finite differences check the whole threshold gradient, clipping terms and ln2 included.

    TQT's gradient is the exact derivative of a smooth stand-in for the quantizer: take
    q~(x; l) = (clamp(x / s(l), qmin, qmax) + d) * s(l), where s(l) = 2^(l - l0 + ceil(l0)) / 2^(b-1) (the
    ceil replaced by a constant offset, i.e. passed straight through) and d = round(x / s0) - x / s0 frozen at
    l0 for the elements inside the range (d = 0 for clipped ones; the straight-through estimator freezes the
    rounding offset). At l = l0, q~ equals the real quantizer, and d q~ / dl = s ln2 (r - x/s) inside,
    s ln2 qmin below and s ln2 qmax above: eqs. 7-8. The loss sum(w * q~) has no rounding in it, so a central
    difference in float64 measures its derivative to ~1e-9, independently of our backward. Elements near a
    clip boundary (|x/s0 - qmin| or |x/s0 - qmax| under 1) are left out: there the rounded and unrounded
    in-range tests disagree and q~ has a kink. Roughly a third of the elements clip on each side, so a wrong
    qmin/qmax term or a missing ln2 changes the gradient far beyond the tolerance.
    """
    bits = 8
    qmin, qmax = -128, 127
    s0 = _scale(log2_t, bits)
    g = torch.Generator().manual_seed(7)
    v = torch.rand(2000, generator=g, dtype=torch.float64) * 600 - 300  # x / s0 in [-300, 300]
    v = v[((v - qmin).abs() > 1) & ((v - qmax).abs() > 1)]
    x = v * s0
    w = torch.randn(v.shape, generator=g, dtype=torch.float64)
    inside = (v > qmin) & (v < qmax)
    d = torch.where(inside, _ref_round(v, mode) - v, torch.zeros_like(v))

    def smooth_loss(lt: float) -> float:
        s = 2.0 ** (lt - log2_t + math.ceil(log2_t)) / 2.0 ** (bits - 1)
        return float((w * (torch.clamp(x / s, qmin, qmax) + d) * s).sum())

    h = 1e-6
    fd = (smooth_loss(log2_t + h) - smooth_loss(log2_t - h)) / (2 * h)
    t = torch.tensor([log2_t], dtype=torch.float64, requires_grad=True)
    loss = (tqt_quantize(x, t, bits, mode) * w).sum()
    assert math.isclose(float(loss.detach()), smooth_loss(log2_t), rel_tol=1e-12)  # the stand-in is the quantizer at l0
    loss.backward()
    assert math.isclose(float(t.grad), fd, rel_tol=1e-6)
    clipped_part = float((w * torch.where(v < qmin, qmin, torch.where(v > qmax, qmax, 0))).sum()) * s0
    assert abs(clipped_part) > 0.1 * abs(fd)  # the clipping terms carry real weight in what was checked


def test_mse_gradient_raises_a_clipping_threshold_and_lowers_a_loose_one():
    """On the loss |q(x) - x|^2, a threshold that clips most values must grow and one far above max|x| must
    shrink (its only gradient is 2 scale^2 ln2 sum (r - s)^2 > 0)."""
    x = torch.randn(4000, generator=torch.Generator().manual_seed(3))
    for log2_t, sign in ((-4.0, -1), (8.0, 1)):
        t = torch.tensor([log2_t], requires_grad=True)
        ((tqt_quantize(x, t, 8, RoundMode.HALF_UP) - x) ** 2).sum().backward()
        assert math.copysign(1, float(t.grad)) == sign and float(t.grad) != 0


# ------------------------------------------------------------------ the module
def test_fix_pos_round_trip_and_forward_on_that_grid():
    x = torch.randn(500, generator=torch.Generator().manual_seed(1)) * 3
    for bits in (4, 8):
        for kind, mode in (("weight", RoundMode.HALF_AWAY), ("activation", RoundMode.HALF_UP)):
            q = TQTQuantizer(bits, kind)
            for fp in range(-3, 13):
                q.set_fix_pos(fp)
                assert q.fix_pos == fp and q.log_threshold.item() == bits - 1 - fp
                assert int(q.warmup_enabled) == 0
                spec = QuantSpec(bitwidth=bits, round_mode=mode, fix_pos=fp)
                assert torch.equal(q(x), fake_quantize(x, spec))


def test_fix_pos_takes_the_ceiling_of_a_trained_threshold():
    q = TQTQuantizer(8)
    with torch.no_grad():
        q.log_threshold.fill_(2.01)
    assert q.fix_pos == 4  # ceil(2.01) = 3
    with torch.no_grad():
        q.log_threshold.fill_(3.0)
    assert q.fix_pos == 4


def test_state():
    q = TQTQuantizer(4, "bias")
    assert q.log_threshold.shape == (1,) and q.log_threshold.item() == 0.0 and q.log_threshold.requires_grad
    assert q.bits == 4 and q.bitwidth.dtype == torch.uint8
    assert int(q.warmup_enabled) == 1 and int(q.quant_enabled) == 1
    assert set(q.state_dict()) == {"log_threshold", "bitwidth", "warmup_enabled", "quant_enabled"}
    assert q.round_mode is RoundMode.HALF_AWAY and TQTQuantizer(8).round_mode is RoundMode.HALF_UP
    with pytest.raises(ValueError, match="kind"):
        TQTQuantizer(8, "act")
    with pytest.raises(ValueError, match="bit width"):
        TQTQuantizer(1)


def test_weight_warmup_uses_mean_plus_three_std_once():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 3, 3, 3, generator=g) * 0.05 + 0.01
    q = TQTQuantizer(8, "weight")
    y = q(w)
    expected = math.log2(abs(float(w.double().mean())) + 3 * float(w.double().std()))
    assert math.isclose(q.log_threshold.item(), expected, rel_tol=1e-6)
    assert int(q.warmup_enabled) == 0
    assert torch.equal(y, fake_quantize(w, QuantSpec(8, round_mode=RoundMode.HALF_AWAY, fix_pos=q.fix_pos)))
    q(w * 100)  # warmup is over: a different batch leaves the threshold alone
    assert math.isclose(q.log_threshold.item(), expected, rel_tol=1e-6)
    q.enable_warmup()
    q(w * 100)
    assert math.isclose(q.log_threshold.item(), expected + math.log2(100), rel_tol=1e-5)


def test_weight_warmup_guards_single_elements_and_zeros():
    q = TQTQuantizer(8, "bias")
    q(torch.tensor([-0.75]))  # std of one element is undefined: T = |x|
    assert math.isclose(q.log_threshold.item(), math.log2(0.75), rel_tol=1e-6)
    q = TQTQuantizer(8, "weight")
    y = q(torch.zeros(10))  # T == 0: the all-zero fix position of post-training calibration (capped at 12)
    assert q.fix_pos == 12 and torch.equal(y, torch.zeros(10))
    q = TQTQuantizer(8, "weight")
    q(torch.tensor([float("inf"), 0.5, -0.5]))  # non-finite values are left out of the statistics
    assert math.isfinite(q.log_threshold.item())


def test_activation_warmup_picks_the_best_power_of_two_threshold():
    """SPEC 2.1's worked example: ReLU of N(0, 1) (max about 4.4) -> threshold 8 covers the max, but 4
    (fix position 5, clipping the tail at 127/32) has the smaller squared error. Checked against a brute
    force over the five candidates from the smallest threshold that leaves max|x| within half a step of the
    grid (SPEC 2.1's fp0) downwards."""
    x = torch.relu(torch.randn(4096, generator=torch.Generator().manual_seed(0)))
    q = TQTQuantizer(8, "activation")
    q(x)
    assert int(q.warmup_enabled) == 0
    assert q.log_threshold.item() == float(round(q.log_threshold.item()))  # a power of two

    def err(e: int) -> float:
        s = 2.0**e / 128
        y = torch.floor(x.double() / s + 0.5).clamp(-128, 127) * s
        return float(((y - x.double()) ** 2).sum())

    top = 7 - math.floor(math.log2(127.5 / float(x.max())))  # 7 - fp0
    best = min(range(top - 4, top + 1), key=lambda e: (err(e), -e))
    assert q.log_threshold.item() == best
    assert best < top  # the search really clips here
    q(x * 1000)
    assert q.log_threshold.item() == best  # once only


def test_disabled_quantizer_is_the_identity_and_warms_up_later():
    x = torch.randn(20)
    q = TQTQuantizer(8, "activation")
    q.disable_quant()
    assert q(x) is x
    assert int(q.warmup_enabled) == 1  # warmup waits until quantization is on
    q.enable_quant()
    y = q(x)
    assert not torch.equal(y, x) and int(q.warmup_enabled) == 0


def test_module_trains_the_threshold_and_freeze_stops_it():
    x = torch.randn(256, generator=torch.Generator().manual_seed(4))
    q = TQTQuantizer(8, "activation")
    q.set_fix_pos(10)  # threshold 2^-3: most values clip
    ((q(x) - x) ** 2).sum().backward()
    assert q.log_threshold.grad is not None and float(q.log_threshold.grad) < 0
    q.freeze()
    assert not q.log_threshold.requires_grad
    x.requires_grad_(True)
    q(x).sum().backward()  # the input still gets its straight-through gradient
    assert x.grad is not None and 0 < int((x.grad != 0).sum()) < x.numel()

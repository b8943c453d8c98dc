"""The compiled kernels give exactly what the eager primitives give."""

from __future__ import annotations

import pytest
import torch

from pytorch_nndct.quant import kernels, primitives
from pytorch_nndct.quant.spec import QuantSpec, RoundMode


@pytest.mark.parametrize("mode", [RoundMode.HALF_UP, RoundMode.HALF_AWAY, RoundMode.HALF_EVEN])
@pytest.mark.parametrize("fp", [-1, 4, 9])
def test_fake_quantize_bit_exact(mode, fp):
    torch.manual_seed(fp)
    x = torch.randn(3, 64, 33, 17) * 2.0 ** (6 - fp)
    x.view(-1)[:8] = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997]) * 2.0**-fp
    spec = QuantSpec(8, True, mode, fp)
    assert torch.equal(kernels.fake_quantize(x, spec), primitives.fake_quantize(x, spec))


@pytest.mark.parametrize("mode", [RoundMode.HALF_UP, RoundMode.HALF_AWAY])
def test_diffs_errors_match_and_pick_the_same_fp(mode):
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.relu(torch.randn(8, 32, 28, 28)) * (seed + 1)
        spec = QuantSpec(8, True, mode)
        fused = primitives.fix_pos_diffs(x, spec, errors=kernels.diffs_errors)
        assert fused == primitives.fix_pos_diffs(x, spec)
        cands = list(range(fused - 2, fused + 3))
        a, b = kernels.diffs_errors(x, spec, cands), primitives.diffs_errors(x, spec, cands)
        assert torch.allclose(a, b, rtol=1e-5, atol=0)


def test_one_kernel_serves_every_rank_without_falling_back():
    spec = QuantSpec(8, True, RoundMode.HALF_UP, 5)
    for shape in [(5000,), (2, 4096), (1, 64, 1, 49, 49), (2, 3, 4, 5, 6, 8), (4096, 1), (3, 40, 40)]:
        x = torch.randn(shape).transpose(0, -1) if len(shape) > 1 else torch.randn(shape)
        assert torch.equal(kernels.fake_quantize(x, spec), primitives.fake_quantize(x, spec))
    assert not kernels.failed()


def test_relu6_fused_into_the_output_point_is_exact():
    from pytorch_nndct.quant.runtime import ActPoint, Mode, QuantState

    state = QuantState(Mode.TEST)
    point = ActPoint("relu6_1", QuantSpec(8, True, RoundMode.HALF_UP), state)
    point.fused_clamp = (0.0, 6.0)
    x = torch.randn(64, 128) * 8
    for fp in (4, 3, -1):
        point.fix_pos = fp
        expected = kernels.fake_quantize(torch.nn.functional.relu6(x), QuantSpec(8, True, RoundMode.HALF_UP, fp))
        assert point.fused_bounds(fp) == (0, min(127, int(6 * 2.0**fp)))
        assert torch.equal(point(x), expected)
    assert point.fused_bounds(-2) is None  # 6 is not on the grid of fix position -2: the ReLU6 runs itself


@pytest.mark.parametrize("clamp", [(0.0, 6.0), (0.0, float("inf"))])
@pytest.mark.parametrize("bitwidth", [8, 2])
def test_relu_fused_into_calibration_observes_and_outputs_the_clamped_values(clamp, bitwidth):
    """Calibration leaves a ReLU/ReLU6 to its output point: same fix positions and outputs as clamping first."""
    from pytorch_nndct.quant.runtime import ActPoint, Mode, QuantState

    state = QuantState(Mode.CALIB)
    spec = QuantSpec(bitwidth, True, RoundMode.HALF_UP)
    fused, plain = ActPoint("relu", spec, state), ActPoint("relu", spec, state)
    fused.fused_clamp = clamp
    torch.manual_seed(bitwidth)
    # a tail after whole rows of the kernel, a tensor small enough for the eager path, ties on the grid
    for shape, scale in [((3, 40, 41, 7), 4.0), ((50, 60), 9.0), ((2, 16, 64, 64), 0.5), ((7, 5000), 30.0)]:
        x = torch.randn(shape) * scale
        x.view(-1)[:4] = torch.tensor([0.5, 1.5, 6.0, 5.75])
        expected = plain(x.clamp(clamp[0], None if clamp[1] == float("inf") else clamp[1]))
        assert torch.equal(fused(x), expected)
        assert fused.observer.counts == plain.observer.counts
    assert not kernels.failed()


@pytest.mark.parametrize("clamp", [None, (0.0, 6.0)])
def test_calibration_output_from_the_search_pass_equals_the_eager_fake_quantize(clamp, monkeypatch):
    """From the second batch on, a calibration point fake-quantizes in the same pass as the fix-position
    search (with the fix position in use before the batch) and keeps that output when the batch leaves the
    fix position unchanged; either way the output is the eager fake-quantization at the current value."""
    from pytorch_nndct.quant.runtime import ActPoint, Mode, QuantState

    mode = RoundMode.HALF_UP
    calls = {"n": 0}
    fused_kernel = kernels._ERRORS_FQ[mode]

    def counting(*args):
        calls["n"] += 1
        return fused_kernel(*args)

    monkeypatch.setitem(kernels._ERRORS_FQ, mode, counting)
    point = ActPoint("act", QuantSpec(8, True, mode), QuantState(Mode.CALIB))
    point.fused_clamp = clamp
    torch.manual_seed(3)
    # sizes that split into rows (of 2048, of 64) and one that does not (4845 elements: odd)
    for k, (shape, scale) in enumerate([((8, 24, 28, 28), 3.0), ((8, 40, 7, 7), 3.1), ((5, 3, 17, 19), 2.9)] * 2):
        x = torch.randn(shape) * scale
        x.view(-1)[:3] = torch.tensor([0.5, 6.0, -0.25])
        out = point(x)
        ref_in = x if clamp is None else x.clamp(*clamp)
        expected = primitives.fake_quantize(ref_in, QuantSpec(8, True, mode, point.observer.value))
        assert torch.equal(out, expected), k
    assert calls["n"] == 3  # every batch after the first whose size splits into rows


def test_calibration_keeps_autograd_when_the_input_needs_it():
    """The compiled kernels run without autograd; a calibration point fed a tensor that needs gradients
    takes the eager path, so the output stays in the autograd graph."""
    from pytorch_nndct.quant.runtime import ActPoint, Mode, QuantState

    point = ActPoint("act", QuantSpec(8, True, RoundMode.HALF_UP), QuantState(Mode.CALIB))
    for _ in range(2):
        x = (torch.randn(8, 16, 32, 32) * 2).requires_grad_(True)
        out = point(x)
        assert out.requires_grad
        assert torch.equal(
            out.detach(), primitives.fake_quantize(x.detach(), point.spec.with_fix_pos(point.observer.value))
        )

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

"""Bias correction (SPEC 2.5): measured in calibration, saved in bias_corr.pth, applied in test mode and export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import sqnr_db
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.export.quant_info import BIAS_CORR, QuantInfoError
from pytorch_nndct.quant.bias_corr import LayerCorrection, float_slice
from pytorch_nndct.quant.runtime import Mode
from small_models import _randomize_bn


class MiniResNet(nn.Module):
    """Residual blocks whose adds round ties (the main source of the mean shift bias correction removes)."""

    def __init__(self, width: int = 16, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
            )
            for _ in range(blocks)
        )  # fmt: skip
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x) + x)
        return self.fc(x.mean(dim=(2, 3)))


def _model_and_data() -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = _randomize_bn(MiniResNet())
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, 16, 16, generator=g) for _ in range(6)]
    return model, calib, torch.randn(32, 3, 16, 16, generator=g)


def _calibrate(model, calib, out, **kwargs) -> torch_quantizer:
    quantizer = torch_quantizer("calib", model, (calib[0][:2],), output_dir=out, **kwargs)
    with torch.no_grad():
        for batch in calib:
            quantizer.quant_model(batch)
    quantizer.export_quant_config()
    return quantizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    model, calib, test_x = _model_and_data()
    dirs = {}
    for corrected in (True, False):
        dirs[corrected] = tmp_path_factory.mktemp(f"bc_{corrected}")
        _calibrate(model, calib, dirs[corrected], include_bias_corr=corrected)
    return model, calib, test_x, dirs


def test_bias_correction_is_saved_and_flagged(runs):
    _model, _, _, dirs = runs
    doc_on = json.loads((dirs[True] / "quant_info.json").read_text())
    doc_off = json.loads((dirs[False] / "quant_info.json").read_text())
    assert doc_on["bias_corrected"] is True and doc_off["bias_corrected"] is False
    assert not (dirs[False] / BIAS_CORR).exists()
    saved = torch.load(dirs[True] / BIAS_CORR, weights_only=True)
    biases = [k for k in doc_on["param"] if k.endswith(".bias")]
    assert len(saved) == len(biases) == 10  # stem, 8 block convs (BN folded into biases), fc
    assert all(v.dim() == 1 and torch.isfinite(v).all() for v in saved.values())
    # the stem's output has no mean shift beyond its bias's rounding, which no correction can undo
    assert sum(bool(v.abs().max() > 0) for v in saved.values()) >= 9


def test_bias_correction_improves_the_quantized_output(runs):
    model, _, test_x, dirs = runs
    with torch.no_grad():
        ref = model(test_x)
        sqnr = {
            c: sqnr_db(ref, torch_quantizer("test", model, (test_x[:2],), output_dir=d).quant_model(test_x))
            for c, d in dirs.items()
        }
    assert sqnr[True] > sqnr[False] + 6.0, sqnr  # measured 41.7 vs 32.4 dB


def test_test_mode_applies_the_corrections_and_float_mode_is_untouched(runs):
    model, _calib, test_x, dirs = runs
    quantizer = torch_quantizer("test", model, (test_x[:2],), output_dir=dirs[True])
    saved = torch.load(dirs[True] / BIAS_CORR, weights_only=True)
    graph = quantizer.export_graph()
    for key, value in saved.items():
        assert torch.allclose(graph.params[key], quantizer.graph.params[key] + value)
    with torch.no_grad():
        quantized = quantizer.quant_model(test_x)
        quantizer.state.mode = Mode.FLOAT  # the same module in float: corrections apply only when quantized
        torch.testing.assert_close(quantizer.quant_model(test_x), model(test_x), rtol=1e-4, atol=1e-5)
        quantizer.state.mode = Mode.TEST
        assert torch.equal(quantizer.quant_model(test_x), quantized)


def test_missing_or_foreign_bias_corr_is_a_clear_error(runs, tmp_path):
    model, _calib, test_x, dirs = runs
    out = tmp_path / "copy"
    out.mkdir()
    (out / "quant_info.json").write_text((dirs[True] / "quant_info.json").read_text())
    with pytest.raises(QuantInfoError, match=r"bias-corrected, but .*bias_corr\.pth does not exist.*recalibrate"):
        torch_quantizer("test", model, (test_x[:2],), output_dir=out)
    (out / BIAS_CORR).write_bytes(b"not a torch file")
    with pytest.raises(QuantInfoError, match=r"cannot be read.*corrupted"):
        torch_quantizer("test", model, (test_x[:2],), output_dir=out)
    torch.save({"other.bias": torch.zeros(3)}, out / BIAS_CORR)
    with pytest.raises(QuantInfoError, match=r"does not have: other\.bias"):
        torch_quantizer("test", model, (test_x[:2],), output_dir=out)


def test_float_slice_takes_a_quarter_of_a_shared_batch_but_at_least_16_samples():
    x, y = torch.randn(128, 3), torch.randn(128, 5)
    (sx, sy), kw = float_slice((x, y), {})
    assert sx.shape == (32, 3) and sy.shape == (32, 5) and kw == {}
    (half,), _ = float_slice((torch.randn(32, 4),), {})
    assert half.shape == (16, 4)
    (whole,), _ = float_slice((torch.randn(8, 4),), {})
    assert whole.shape == (8, 4)
    mixed = (torch.randn(64, 3), torch.randn(4, 3))  # no common batch size: everything is kept
    assert float_slice(mixed, {})[0][0].shape == (64, 3)


def test_layer_correction_matches_samples_along_the_batch_dimension():
    # a linear layer on (sequence, batch, features): the float pass saw 2 of 8 samples along dim 1
    layer = LayerCorrection("fc.bias", channel_dim=-1)
    y = torch.randn(5, 8, 4)
    layer.record_float(y[:, :2] - 1.0)
    out = layer.update(y.clone())  # updated in place when no gradient is needed
    torch.testing.assert_close(layer.value, -torch.ones(4))
    torch.testing.assert_close(out, y - 1.0)
    # once corrected, the quantized output matches the float one and the correction stays
    layer.record_float(y[:, :2] - 1.0)
    layer.update(y - 1.0)
    torch.testing.assert_close(layer.value, -torch.ones(4))


def test_the_guard_refuses_a_shift_that_comes_from_a_few_outliers():
    # one channel is off by +1 everywhere (a rounding shift: corrected); another is exact except for a few
    # positions off by +40 (clipped outliers: its mean shift is 2.5, but correcting it would move every
    # other position away, so it is refused)
    layer = LayerCorrection("fc.bias", channel_dim=-1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        y = torch.randn(4, 16, 2, generator=g)
        error = torch.zeros_like(y)
        error[..., 0] = 1.0
        error[:, ::16, 1] = 40.0  # one position in 16 of each sample
        layer.record_float(y)
        layer.update(y + error + (layer.value if layer.value is not None else 0.0))
    assert layer.candidate[1] < -2.0  # the plain mean would have corrected it
    torch.testing.assert_close(layer.value, torch.tensor([-1.0, 0.0]))


def test_a_single_calibration_batch_is_scored_on_its_own_held_out_half():
    layer = LayerCorrection("conv.bias", channel_dim=1)
    y = torch.randn(8, 3, 4, 4)
    layer.record_float(y)
    layer.update(y + torch.tensor([0.5, 0.0, -0.5]).view(1, 3, 1, 1))
    torch.testing.assert_close(layer.value, torch.tensor([-0.5, 0.0, 0.5]))


def test_the_correction_leaves_the_bias_grid_to_the_bias():
    # the layer's output is off by +0.3 per channel, and its bias is quantized on a grid of step 0.25: the
    # first pass carries q(b) - b, the bias's own rounding, which no correction can undo (q(b + c) rounds
    # again). The candidate is what cancels the shift with a float bias (-0.3), and the bias carries
    # q(b - 0.3), the grid point nearest to the float output's mean
    bias, step = torch.tensor([0.1, -0.6, 0.37]), 0.25

    def grid_shift(c):
        target = bias if c is None else bias + c
        return torch.round(target / step) * step - bias

    layer = LayerCorrection("conv.bias", channel_dim=1)
    layer.grid_shift = grid_shift
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        y = torch.randn(8, 3, 4, 4, generator=g)
        layer.record_float(y + bias.view(1, 3, 1, 1))
        layer.update(y + 0.3 + (bias + grid_shift(layer.value)).view(1, 3, 1, 1))
    torch.testing.assert_close(layer.candidate, torch.full((3,), -0.3))
    torch.testing.assert_close(bias + grid_shift(layer.value), torch.round((bias - 0.3) / step) * step)


class Masked(nn.Module):
    """A linear layer whose positions 4.. never reach the output (padding masked out of a mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("keep", (torch.arange(8) < 4).float().view(1, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fc(x) * self.keep).sum(1)


def test_positions_that_do_not_reach_the_output_are_left_out(tmp_path):
    torch.manual_seed(0)
    model = Masked().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, 6, generator=g)
    x[:, 4:] *= 50.0  # the padding: large values, badly clipped, and meaningless
    quantizer = torch_quantizer("calib", model, (x[:4],), output_dir=tmp_path)
    corrector = quantizer.corrector
    (layer,) = corrector.layers.values()
    seen = []
    record = layer.record_float
    layer.record_float = lambda y, live=None: (seen.append(live), record(y, live))
    with torch.no_grad():
        quantizer.quant_model(x)
    (live,) = seen
    assert live is not None and live.view(16, 8).tolist() == [[True] * 4 + [False] * 4] * 16
    assert corrector.find_live  # dead positions were found: later batches look for them again


def test_a_model_without_dead_positions_skips_the_gradient_after_one_batch(runs, tmp_path):
    model, calib, _, _ = runs
    quantizer = torch_quantizer("calib", model, (calib[0][:2],), output_dir=tmp_path)
    assert quantizer.corrector.find_live
    with torch.no_grad():
        quantizer.quant_model(calib[0])
    assert not quantizer.corrector.find_live


@pytest.fixture(scope="module")
def on_off():
    """benchmarks/helpers_on_off.py's models and quantization run (the issue's table is printed from them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import helpers_on_off

    return helpers_on_off


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "digits_mbv2"])
def test_bias_correction_never_costs_the_trained_digits_models_more_than_a_tenth_of_a_db(on_off, name):
    # measured (2-core CPU): DigitsNet +3.25 / +3.16 dB at 16 / 64 samples, DigitsMobileNetV2 +1.28 / +1.42
    model, pool, evals, _labels = on_off.load(name)
    with torch.no_grad():
        ref = model(evals)
    for samples in (16, 64):
        sqnr = {
            bc: sqnr_db(ref, on_off.quantized_outputs(model, pool[:samples], evals, cle=True, bc=bc, batch=32))
            for bc in (True, False)
        }
        assert sqnr[True] >= sqnr[False] - 0.1, (samples, sqnr)

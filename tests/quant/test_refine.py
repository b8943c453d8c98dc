"""Output-aware refinement (quant/refine.py): calibrated steps moved where the network's output error drops."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from helpers import sqnr_db
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.quant.config import ConfigError
from pytorch_nndct.quant.refine import candidates, refine
from pytorch_nndct.quant.spec import QuantSpec
from pytorch_nndct.quant.table import QuantTable
from small_models import Sensitive


def _calibrate(tmp_path, refinement: bool | None, config: dict | None = None):
    torch.manual_seed(0)
    model = Sensitive().eval()
    g = torch.Generator().manual_seed(1)
    batches = list(torch.randn(48, 16, generator=g).split(16))
    doc = {"include_cle": False, **(config or {})}
    if refinement is not None:
        doc["output_refinement"] = refinement
    path = tmp_path / f"config_{refinement}.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / f"out_{refinement}"
    calib = torch_quantizer("calib", model, (batches[0],), output_dir=out, quant_config_file=str(path))
    with torch.no_grad():
        for b in batches:
            calib.quant_model(b)
    calib.export_quant_config()
    test = torch_quantizer("test", model, (batches[0],), output_dir=out, quant_config_file=str(path))
    x = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        db = sqnr_db(model(x), test.quant_model(x))
    info = json.loads((out / "quant_info.json").read_text())
    return calib, db, info


CPU_FLOAT = {"scale_type": "float", "method": "maxmin", "calib_statistic_method": "max"}


@pytest.mark.parametrize("config", [{}, {"target_device": "CPU", "overall_quantize_config": CPU_FLOAT}])
def test_refinement_finds_the_step_the_output_needs(tmp_path, config):
    off_calib, off_db, off_info = _calibrate(tmp_path, False, config)
    on_calib, on_db, on_info = _calibrate(tmp_path, True, config)
    assert off_calib.refinement is None
    record = on_calib.refinement
    mul = next(k for k in on_calib.plan.outputs if k.startswith("mul"))
    assert record.moved.get(mul, 0) > 0, record.moved  # a finer step on the product (its big channel clipped)
    assert record.after < record.before
    assert on_db > off_db + 3.0, (on_db, off_db)  # finer steps on what the head reads
    if not config:  # power of two: the file holds the refined fix position
        entry = next(k for k in on_info["output"] if k.endswith(mul))
        assert on_info["output"][entry][0][1] > off_info["output"][entry][0][1]


def test_refinement_never_keeps_a_move_that_does_not_help():
    table = QuantTable("m")
    for k, fp in {"a": 3, "b": 5, "c": 2}.items():
        table.outputs[k] = QuantSpec(fix_pos=fp)
    best = {"a": 5, "b": 5, "c": 1}
    seen = []

    def error_of(t: QuantTable) -> float:
        seen.append({k: s.fix_pos for k, s in t.outputs.items()})
        return 1.0 + sum((t.outputs[k].fix_pos - v) ** 2 for k, v in best.items())

    refined, record = refine(table, [("a",), ("b",), ("c",)], error_of, sweeps=3)
    assert {k: s.fix_pos for k, s in refined.outputs.items()} == best
    assert record.moved == {"a": 2, "c": -1} and record.after == 1.0 and record.before == 6.0
    assert record.trials == len(seen)
    # the input table is left as it was
    assert {k: s.fix_pos for k, s in table.outputs.items()} == {"a": 3, "b": 5, "c": 2}


def test_tied_points_move_together():
    table = QuantTable("m")
    table.outputs["x"], table.outputs["y"] = QuantSpec(fix_pos=4), QuantSpec(fix_pos=4)

    def error_of(t: QuantTable) -> float:
        assert t.outputs["x"].fix_pos == t.outputs["y"].fix_pos
        return abs(t.outputs["x"].fix_pos - 6) + 1.0

    refined, record = refine(table, [("x", "y")], error_of)
    assert refined.outputs["x"].fix_pos == refined.outputs["y"].fix_pos == 6
    assert record.moved == {"x": 2, "y": 2}


def test_candidates_skip_float_and_per_channel_points():
    table = QuantTable("m")
    table.outputs["act"] = QuantSpec(fix_pos=3)
    table.outputs["float"] = QuantSpec(fix_pos=None, float_scale=True, scale=0.1)
    table.outputs["uncalibrated"] = QuantSpec(fix_pos=None)
    table.params["conv.weight"] = QuantSpec(fix_pos=7)
    table.params["conv.bias"] = QuantSpec(fix_pos=7)
    table.params["dw.weight"] = QuantSpec(fix_pos=None, per_channel=True, float_scale=True)
    groups = candidates(table, [("act",), ("float",), ("uncalibrated",)])
    assert groups == [("act",), ("float",), ("conv.weight",)]
    assert not math.isnan(QuantSpec(fix_pos=None, float_scale=True, scale=0.1).scale)


def test_output_refinement_must_be_a_boolean(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"output_refinement": "yes"}))
    with pytest.raises(ConfigError, match="output_refinement must be true or false"):
        torch_quantizer("calib", Sensitive(), (torch.randn(2, 16),), output_dir=tmp_path, quant_config_file=str(path))


class Attention(nn.Module):
    """Sensitive's product (one channel 100 times larger, ignored by the head: the tensor's own best step is
    too coarse for the output) read through a softmax: `auto` refines graphs with attention or layer norms."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Sensitive()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=-1)


@pytest.mark.parametrize("attention", [False, True])
def test_auto_refines_attention_networks_only(tmp_path, attention, caplog):
    torch.manual_seed(0)
    model = (Attention() if attention else Sensitive()).eval()
    x = torch.randn(16, 16)
    calib = torch_quantizer("calib", model, (x,), output_dir=tmp_path)
    with torch.no_grad(), caplog.at_level("INFO", logger="pytorch_nndct"):
        calib.quant_model(x)
        calib.export_quant_config()
    if attention:
        assert calib.refinement is not None and calib.refinement.trials > 1
        assert "output-aware refinement: output error" in caplog.text
    else:
        assert calib.refinement is None
        assert "output-aware refinement off (no attention or layer norm" in caplog.text


def test_auto_bounds_the_cost():
    from pytorch_nndct.quant.refine import AUTO_MAX_GROUPS, auto

    assert auto(["linear", "softmax"], AUTO_MAX_GROUPS) is None
    assert "more than" in auto(["linear", "layer_norm"], AUTO_MAX_GROUPS + 1)
    assert "no attention" in auto(["conv2d", "relu"], 10)

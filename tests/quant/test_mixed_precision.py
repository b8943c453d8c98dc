"""Mixed precision by sensitivity (quant/mixed.py): the most sensitive activation points at 16 bits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from helpers import calib_then_test
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import InputError
from pytorch_nndct.export.deploy import lower
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.quant.config import ConfigError
from pytorch_nndct.quant.mixed import WIDE_BITS, budget_count, output_error
from pytorch_nndct.quant.rules import fix_ties
from small_models import Sensitive

NO_CLE = {"include_cle": False}  # equalization would shrink the wide channel the tests rely on


class Pooled(nn.Module):
    """conv -> relu -> max pool -> conv -> relu -> conv: with change_pool_input_fix the pooling input and
    output are tied (one fix position, so one bit width)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.c3(torch.relu(self.c2(x)))


def _data(shape: tuple[int, ...], n: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return list(x.split(8))


def _config(tmp_path, **keys) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**NO_CLE, **keys}))
    return str(path)


def _calibrate(tmp_path, model, batches, out="out", **kwargs):
    torch.manual_seed(0)
    return calib_then_test(model.eval(), batches[0][:2], batches, tmp_path / out, **kwargs)


def _info(quantizer) -> dict:
    return json.loads((quantizer.output_dir / "quant_info.json").read_text())


def _product(quantizer) -> str:
    return next(n.name for n in quantizer.graph.nodes if n.op is Op.MUL)


def test_the_obviously_sensitive_point_is_chosen_and_written_as_16_bits(tmp_path):
    torch.manual_seed(0)
    batches = _data((16,))
    calib, test = _calibrate(tmp_path, Sensitive(), batches, quant_config_file=_config(tmp_path),
                             mixed_precision_budget=1)  # fmt: skip
    info = _info(calib)
    key = f"Sensitive::{_product(calib)}"
    assert info["mixed_precision"] == [key]
    bw, fp = info["output"][key][0]
    assert bw == WIDE_BITS and fp >= 8  # 8 more bits than the 8-bit grid (fp <= 1) gave
    assert [v[0][0] for k, v in info["output"].items() if k != key] == [8] * (len(info["output"]) - 1)
    base, final = calib.mixed_precision_errors
    assert final < base / 10
    assert test.points[key.split("::")[1]].spec.bitwidth == WIDE_BITS


def test_test_mode_reproduces_the_error_measured_at_export(tmp_path):
    torch.manual_seed(0)
    model, batches = Sensitive().eval(), _data((16,))
    calib, test = _calibrate(tmp_path, model, batches, quant_config_file=_config(tmp_path),
                             mixed_precision_budget=2)  # fmt: skip
    with torch.no_grad():
        quantized = [test.quant_model(b) for b in batches[:2]]  # the two batches calibration kept
        reference = [model(b) for b in batches[:2]]
    assert output_error(quantized, reference) == pytest.approx(calib.mixed_precision_errors[1], rel=1e-9, abs=0)


def test_budget_count_and_fraction_are_respected(tmp_path):
    torch.manual_seed(1)
    model, batches = Pooled().eval(), _data((3, 8, 8))
    calib, _ = _calibrate(tmp_path, model, batches, out="count", mixed_precision_budget=2)
    assert 1 <= len(_info(calib)["mixed_precision"]) <= 2
    calib, _ = _calibrate(tmp_path, model, batches, out="fraction", mixed_precision_budget=0.5)
    info = _info(calib)
    widened = [k for k, v in info["output"].items() if v[0][0] == WIDE_BITS]
    assert sorted(widened) == sorted(info["mixed_precision"])
    assert 1 <= len(widened) <= math.floor(0.5 * len(info["output"]))


def test_tied_points_get_one_width_and_fix_position(tmp_path):
    torch.manual_seed(2)
    model, batches = Pooled().eval(), _data((3, 8, 8))
    config = _config(tmp_path, change_pool_input_fix=True)
    calib, _ = _calibrate(tmp_path, model, batches, quant_config_file=config, mixed_precision_budget=0.99)
    groups = fix_ties(calib.graph, calib.plan)
    assert any(len(g) == 2 for g in groups)  # the pooling input and output
    outputs = _info(calib)["output"]
    for group in groups:
        assert len({tuple(outputs[f"Pooled::{k}"][0]) for k in group}) == 1


def test_exports_carry_the_16_bit_points(tmp_path):
    torch.manual_seed(0)
    calib, test = _calibrate(tmp_path, Sensitive(), _data((16,)), quant_config_file=_config(tmp_path),
                             mixed_precision_budget=1)  # fmt: skip
    key = _product(calib)
    deploy = lower(test.export_graph(), test.plan, test.table, None)
    widths = {(op.node, op.fix[0]) for op in deploy.ops if op.fix is not None}
    assert {node for node, bw in widths if bw == WIDE_BITS} == {key}
    assert {bw for node, bw in widths} == {8, WIDE_BITS}
    assert test.export_onnx_model().is_file()


def test_budget_zero_changes_nothing(tmp_path):
    model, batches = Pooled().eval(), _data((3, 8, 8))
    plain, _ = _calibrate(tmp_path, model, batches, out="plain")
    zero, _ = _calibrate(tmp_path, model, batches, out="zero", mixed_precision_budget=0)
    assert (plain.output_dir / "quant_info.json").read_bytes() == (zero.output_dir / "quant_info.json").read_bytes()


def test_budget_from_the_config_file(tmp_path):
    torch.manual_seed(0)
    calib, _ = _calibrate(tmp_path, Sensitive(), _data((16,)),
                          quant_config_file=_config(tmp_path, mixed_precision_budget=1))  # fmt: skip
    assert _info(calib)["mixed_precision"] == [f"Sensitive::{_product(calib)}"]


@pytest.mark.parametrize("budget", [-1, 1.0, 1.5, -0.1, float("nan"), "4", True, None])
def test_invalid_budgets_are_refused(budget):
    if budget is None:  # None is the default: no mixed precision
        return
    with pytest.raises(InputError, match=r"mixed_precision_budget.*Fix: pass a number"):
        torch_quantizer("calib", Sensitive(), torch.randn(2, 16), mixed_precision_budget=budget)


def test_invalid_budget_in_the_config_file(tmp_path):
    with pytest.raises(ConfigError, match="mixed_precision_budget = -2"):
        torch_quantizer("calib", Sensitive(), torch.randn(2, 16),
                        quant_config_file=_config(tmp_path, mixed_precision_budget=-2))  # fmt: skip


def test_a_dpu_target_refuses_16_bit_activations():
    with pytest.raises(InputError, match="8-bit feature maps"):
        torch_quantizer("calib", Sensitive(), torch.randn(2, 16), target="DPUCZDX8G_ISA1_B1024",
                        mixed_precision_budget=2)  # fmt: skip


def test_budget_count():
    assert budget_count(4, 10) == 4 and budget_count(40, 10) == 10
    assert budget_count(0.05, 100) == 5 and budget_count(0.05, 19) == 0 and budget_count(0.5, 7) == 3

"""Quantization points with float steps and float data types: calibration, quant_info, test mode."""

from __future__ import annotations

import json

import pytest
import torch
from test_config import _data

from helpers import calib_then_test
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import NndctError
from pytorch_nndct.quant.calibrated import load_table
from pytorch_nndct.quant.runtime import ActPoint, Mode

FLOAT = {"target_device": "CPU", "overall_quantize_config": {
    "method": "maxmin", "round_mode": "half_even", "scale_type": "float", "calib_statistic_method": "mean"},
    "tensor_quantize_config": {"activation": {"symmetry": False}}}  # fmt: skip


def _quantizers(tmp_path, doc):
    model, batches = _data()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(doc))
    calib, test = calib_then_test(model, batches[0], batches, tmp_path, quant_config_file=config)
    return calib, test, batches


def test_float_steps_are_a_statistic_over_batches_and_test_mode_reproduces_them(tmp_path):
    calib, test, batches = _quantizers(tmp_path, FLOAT)
    acts = {k: p for k, p in calib.points.items() if isinstance(p, ActPoint)}
    assert acts and all(p.spec.float_scale for p in acts.values())
    for key, point in acts.items():
        assert point.observer.batches == len(batches)
        assert test.points[key].scale == point.observer.value  # read back from quant_info.json, bit for bit
        assert point.spec.symmetric == (key == "input_0")  # activations asymmetric, the network input not
    # the calibrated model switched to test mode computes exactly what the test-mode quantizer computes
    load_table(calib.plan, calib.points, test.table)
    calib.state.mode = Mode.TEST
    with torch.no_grad():
        assert torch.equal(calib.quant_model(batches[0]), test.quant_model(batches[0]))
        float_out = test.quant_model(batches[0])
        test.state.mode = Mode.FLOAT
        assert not torch.equal(test.quant_model(batches[0]), float_out)


def test_export_needs_a_calibration_pass_with_float_steps(tmp_path):
    model, batches = _data()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FLOAT))
    calib = torch_quantizer("calib", model, (batches[0],), output_dir=tmp_path, quant_config_file=config)
    with pytest.raises(NndctError, match="before any calibration forward pass"):
        calib.export_quant_config()


def test_float_data_type_points_round_to_their_type(tmp_path):
    doc = {"target_device": "GPU", "overall_quantize_config": {"datatype": "bfloat16"},
           "tensor_quantize_config": {"activation": {"datatype": "float16"}}}  # fmt: skip
    _calib, test, batches = _quantizers(tmp_path, doc)
    info = json.loads((tmp_path / "quant_info.json").read_text())
    assert info["param"] == {} and info["output"] == {} and info["dtype"]["output"]["Net::input_0"] == ["bfloat16"]
    seen = []
    for key, point in test.points.items():
        if isinstance(point, ActPoint):
            point.observer = None  # not used by float data types
            seen.append(key)
    with torch.no_grad():
        out = test.quant_model(batches[0])
    assert seen and torch.equal(out, out.half().float())
    conv = test.points["conv1.weight"]
    w = test.graph.params["conv1.weight"]
    assert torch.equal(conv("weight", w), w.bfloat16().float())

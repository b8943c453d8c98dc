"""The strategy config file (SPEC 2.6): each option, and the errors for unknown or conflicting settings."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import NndctError
from pytorch_nndct.export.quant_info import BIAS_CORR, QuantInfoError
from pytorch_nndct.quant.config import ConfigError, QuantConfig, parse_config
from pytorch_nndct.quant.observers import FixPosObserver
from pytorch_nndct.quant.primitives import fix_pos_maxmin, fix_pos_percentile
from pytorch_nndct.quant.spec import RoundMode, TensorKind
from small_models import _randomize_bn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.conv2(y) + y)
        return self.fc(self.pool(y).flatten(1))


def _data():
    torch.manual_seed(0)
    model = _randomize_bn(Net())
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(8, 3, 8, 8, generator=g) for _ in range(4)]


def _calibrate(tmp_path, config: dict | None, **kwargs):
    model, batches = _data()
    path = None
    tmp_path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
    q = torch_quantizer("calib", model, (batches[0],), output_dir=tmp_path, quant_config_file=path, **kwargs)
    with torch.no_grad():
        for b in batches:
            q.quant_model(b)
    q.export_quant_config()
    return q, path


def _doc(tmp_path) -> dict:
    doc = json.loads((tmp_path / "quant_info.json").read_text())
    return {k.split("::")[1]: v[0] for section in ("param", "output") for k, v in doc[section].items()}


def test_bit_width_per_kind_and_overall(tmp_path):
    _q, _ = _calibrate(tmp_path, {"overall_quantize_config": {"bit_width": 6},
                                 "tensor_quantize_config": {"weights": {"bit_width": 4}}})  # fmt: skip
    doc = _doc(tmp_path)
    assert doc["conv1.weight"][0] == doc["fc.weight"][0] == 4
    assert doc["conv1.bias"][0] == doc["input_0"][0] == 6
    assert all(bw == 6 for k, (bw, _) in doc.items() if not k.endswith("weight"))


def test_layer_overrides_by_name_and_by_type(tmp_path):
    rules = [
        {"layer_name": "conv2", "tensor_quantize_config": {"weights": {"bit_width": 4}}},
        {"layer_type": "torch.nn.Linear", "tensor_quantize_config": {"weights": {"bit_width": 6}}},
    ]
    _calibrate(tmp_path, {"layer_quantize_config": rules})
    doc = _doc(tmp_path)
    assert doc["conv1.weight"][0] == 8 and doc["conv2.weight"][0] == 4 and doc["fc.weight"][0] == 6
    config = parse_config(
        {"layer_quantize_config": [{"layer_type": "Conv2d", "overall_quantize_config": {"bit_width": 5}}]}
    )
    assert config.tensor(TensorKind.WEIGHT, "a.b", nn.Conv2d).bit_width == 5
    assert config.tensor(TensorKind.WEIGHT, "a.b", nn.Linear).bit_width == 8


def test_round_mode_reaches_the_simulation(tmp_path):
    q, path = _calibrate(tmp_path, {"target_device": "CPU",
                                    "tensor_quantize_config": {"activation": {"round_mode": "half_even"}}})  # fmt: skip
    assert {s.round_mode for s in q.plan.outputs.values()} == {
        RoundMode.HALF_UP,
        RoundMode.HALF_EVEN,
    }  # input keeps its
    key = next(k for k in q.plan.outputs if k != "input_0")
    assert q.points[key].spec.round_mode is RoundMode.HALF_EVEN
    # a value exactly between two grid points rounds to even, not up
    test = torch_quantizer("test", _data()[0], (_data()[1][0],), output_dir=tmp_path, quant_config_file=path)
    act = test.points[key]
    assert act.spec.round_mode is RoundMode.HALF_EVEN
    lsb = 2.0**-act.fix_pos
    assert act._quantize(torch.tensor([2.5 * lsb])).item() == 2 * lsb


def test_methods_and_statistics(tmp_path):
    x = torch.cat([torch.randn(10000), torch.tensor([40.0])])
    assert fix_pos_percentile(x, 8, 99.9) > fix_pos_maxmin(x, 8)  # the outlier is ignored
    assert fix_pos_percentile(x, 8, 100.0) == fix_pos_maxmin(x, 8)
    obs = {s: FixPosObserver(s) for s in ("modal", "max", "mean", "median")}
    for fp in (5, 5, 6, 9):
        for o in obs.values():
            o.observe(fp)
    assert {s: o.value for s, o in obs.items()} == {"modal": 5, "max": 5, "mean": 6, "median": 5}
    # power-of-two with another statistic or method: FLEXML (the original checks no rules for it)
    q, _ = _calibrate(tmp_path, {"target_device": "FLEXML", "tensor_quantize_config": {
        "activation": {"method": "maxmin", "calib_statistic_method": "max"}}})  # fmt: skip
    maxmin = _doc(tmp_path)
    _calibrate(tmp_path / "diffs", None)
    diffs = _doc(tmp_path / "diffs")
    outs = [k for k in diffs if not k.endswith(("weight", "bias")) and k != "input_0"]
    assert all(maxmin[k][1] <= diffs[k][1] for k in outs)  # maxmin never clips: never a larger fix position
    assert any(maxmin[k][1] < diffs[k][1] for k in outs)
    for method in ("mse", "percentile"):
        q, _ = _calibrate(tmp_path / method, {"target_device": "FLEXML", "overall_quantize_config": {"method": method}})
        assert all(p.calib.method == method for p in q.plan.params)


def test_bias_correction_switch(tmp_path):
    _calibrate(tmp_path, {"include_bias_corr": False})
    assert not (tmp_path / BIAS_CORR).exists()
    _calibrate(tmp_path / "on", {"include_bias_corr": True})
    assert (tmp_path / "on" / BIAS_CORR).exists()


def test_cpu_target_refuses_xmodel_but_exports_onnx(tmp_path):
    _q, path = _calibrate(tmp_path, {"target_device": "CPU"})
    model, batches = _data()
    test = torch_quantizer("test", model, (batches[0],), output_dir=tmp_path, quant_config_file=path)
    with pytest.raises(NndctError, match=r"targets CPU.*export_onnx_model"):
        test.export_xmodel()
    assert test.export_onnx_model().exists()


def test_test_mode_with_other_bit_widths_is_refused(tmp_path):
    _calibrate(tmp_path, {"tensor_quantize_config": {"weights": {"bit_width": 4}}})
    model, batches = _data()
    with pytest.raises(QuantInfoError, match=r"calibrated with other bit widths: conv1\.weight \(4 bit"):
        torch_quantizer("test", model, (batches[0],), output_dir=tmp_path)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"include_clee": True}, r"unknown key\(s\) 'include_clee'. Known keys: .*include_cle"),
        ({"tensor_quantize_config": {"weight": {}}}, r"unknown key\(s\) 'weight'"),
        ({"overall_quantize_config": {"bits": 8}}, r"overall_quantize_config: unknown key\(s\) 'bits'"),
        ({"tensor_quantize_config": {"weights": {"per_channel": True}}}, "conflicts with target_device DPU"),
        ({"target_device": "CPU", "tensor_quantize_config": {"activation": {"per_channel": True}}}, "only for weights"),
        ({"overall_quantize_config": {"scale_type": "float"}}, "conflicts with target_device DPU"),
        ({"overall_quantize_config": {"symmetry": False}}, "conflicts with target_device DPU"),
        ({"overall_quantize_config": {"method": "percentile"}}, "conflicts with target_device DPU"),
        ({"target_device": "CPU", "overall_quantize_config": {"method": "entropy"}}, "power-of-two scales are calib"),
        ({"tensor_quantize_config": {"activation": {"round_mode": "half_even"}}}, "rounds activations half up"),
        ({"tensor_quantize_config": {"weights": {"round_mode": "nearest"}}}, "round_mode 'nearest' is not one of"),
        ({"tensor_quantize_config": {"weights": {"bit_width": 1}}}, "bit_width must be an integer from 2 to 16"),
        ({"target_device": "FPGA"}, "target_device 'FPGA' is not one of DPU, CPU, GPU, FLEXML"),
        ({"include_cle": "yes"}, "include_cle must be true or false"),
        ({"convert_relu6_to_relu": True}, "not supported yet"),
        (
            {
                "layer_quantize_config": [
                    {"layer_name": "c", "quantizable_data_type": ["weights"], "tensor_quantize_config": {"bias": {}}}
                ]
            },
            "quantizable_data_type does not list",
        ),
        ({"layer_quantize_config": [{"layer_type": "Conv2d", "layer_name": "c"}]}, "exactly one of layer_type"),
        ({"layer_quantize_config": [{"layer_name": "c", "colour": 1}]}, r"layer_quantize_config\[0\]: unknown key"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_config_errors(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_config_file_errors(tmp_path):
    model, batches = _data()
    with pytest.raises(ConfigError, match="does not exist"):
        torch_quantizer("calib", model, (batches[0],), output_dir=tmp_path, quant_config_file=tmp_path / "no.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        torch_quantizer("calib", model, (batches[0],), output_dir=tmp_path, quant_config_file=bad)


def test_defaults_are_the_originals():
    config = parse_config({})
    assert config == QuantConfig.default()
    assert config.include_cle and config.include_bias_corr and config.target_device == "DPU"
    w, a, i = (config.tensors[k] for k in (TensorKind.WEIGHT, TensorKind.ACTIVATION, TensorKind.INPUT))
    assert (w.round_mode, a.round_mode, i.round_mode) == (RoundMode.HALF_AWAY, RoundMode.HALF_UP, RoundMode.HALF_UP)
    assert (w.calib.method, a.calib.method, i.calib.method, a.calib.statistic) == ("diffs", "diffs", "maxmin", "modal")


def test_float_scale_weights_for_cpu_targets(tmp_path):
    from pytorch_nndct.quant.primitives import fake_quantize, float_scales, quantize

    w = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.0, 3.0]).reshape(6, 1, 1, 1)
    spec = QuantConfig.default().tensors[TensorKind.WEIGHT]
    weights = {"scale_type": "float", "per_channel": True, "method": "maxmin"}
    pc = parse_config({"target_device": "CPU", "tensor_quantize_config": {"weights": weights}})
    pc = pc.tensors[TensorKind.WEIGHT].spec()
    assert pc.float_scale and pc.per_channel and not spec.spec().float_scale
    q, s = quantize(w, pc), float_scales(w, pc)
    assert s.shape == (6, 1, 1, 1) and s[4].item() == 1.0  # an all-zero channel gets scale 1
    assert all(q[c].abs().max() == 127 for c in (0, 1, 2, 3, 5))  # every channel uses its full range
    assert ((fake_quantize(w, pc) - w).abs() <= 0.5 * s + 1e-12).all()
    _calibrate(tmp_path, {"target_device": "CPU", "tensor_quantize_config": {
        "weights": {"scale_type": "float", "per_channel": True, "method": "maxmin"}}})  # fmt: skip
    doc = _doc(tmp_path)
    assert doc["conv1.weight"] == [8, None] and isinstance(doc["conv1.bias"][1], int)  # scales follow the weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"per_channel": True, "scale_type": "float"}, "per-channel float scales are calibrated with maxmin"),
        ({"scale_type": "log"}, "scale_type 'log' is not one of poweroftwo, float"),
    ],
)
def test_float_scale_errors(weights, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"target_device": "CPU", "tensor_quantize_config": {"weights": weights}})

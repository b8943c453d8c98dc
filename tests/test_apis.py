"""The seed API: calibrate in one process, test in fresh ones; the files; clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import InputError, NndctError
from pytorch_nndct.export.quant_info import QuantInfoError
from quant_process import model_and_data

HERE = Path(__file__).parent


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    subprocess.run([sys.executable, str(HERE / "quant_process.py"), *args], check=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calib")
    _run("calib", str(out))
    return out


def test_fresh_test_processes_are_bit_identical_and_match_in_process(calibrated, tmp_path):
    _run("test", str(calibrated), str(tmp_path / "a.pt"))
    _run("test", str(calibrated), str(tmp_path / "b.pt"))
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert torch.equal(a, b)
    model, data = model_and_data()
    quantizer = torch_quantizer("test", model, (data[:4],), output_dir=calibrated)
    with torch.no_grad():
        assert torch.equal(quantizer.quant_model(data), a)
        float_out = model(data)
    assert not torch.equal(a, float_out)  # it is quantized
    assert (a - float_out).abs().max() < 0.5 * float_out.abs().max()


def test_quant_info_follows_spec(calibrated):
    doc = json.loads((calibrated / "quant_info.json").read_text())
    assert set(doc) == {"param", "output", "input", "fast_finetuned", "bias_corrected", "version", "graph_md5",
                        "equalized_pairs"}  # fmt: skip
    assert doc["equalized_pairs"] == []  # DigitsNet's one pair is left out with bias correction (test_cle_choice)
    assert "DigitsNet::stem.0.weight" in doc["param"] and "DigitsNet::stem.0.bias" in doc["param"]
    assert "DigitsNet::input_0" in doc["output"]
    for section in ("param", "output"):
        for key, value in doc[section].items():
            assert key.startswith("DigitsNet::")
            (bw, fp) = value[0]
            assert bw == 8 and isinstance(fp, int)
    assert doc["version"].startswith("0.1.0+torch")
    assert len(doc["graph_md5"]) == 32
    assert (calibrated / "DigitsNet.py").exists()


def test_constraints_hold_in_exported_config(calibrated):
    doc = json.loads((calibrated / "quant_info.json").read_text())
    p = {k.split("::")[1]: v[0][1] for k, v in doc["param"].items()}
    o = {k.split("::")[1]: v[0][1] for k, v in doc["output"].items()}
    fp_w, fp_b, fp_i = p["stem.0.weight"], p["stem.0.bias"], o["input_0"]
    fp_o = next(v for k, v in o.items() if k != "input_0")  # the stem's group (conv -> relu) comes next
    shift_cut = fp_w + fp_i - fp_o
    assert 0 <= shift_cut <= 16
    assert min(0, shift_cut - 16) <= fp_w + fp_i - fp_b <= 16


def test_export_in_test_mode_keeps_the_calibration(calibrated):
    before = (calibrated / "quant_info.json").read_bytes()
    model, data = model_and_data()
    quantizer = torch_quantizer(2, model, data[:4], output_dir=calibrated)
    quantizer.export_quant_config()
    assert (calibrated / "quant_info.json").read_bytes() == before


def test_float_mode_runs_the_float_graph(tmp_path):
    model, data = model_and_data()
    quantizer = torch_quantizer("float", model, (data[:4],), output_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(quantizer.quant_model(data), model(data), atol=1e-5)


# ----------------------------------------------------------------------------------------- errors
def test_unknown_quant_mode():
    with pytest.raises(InputError, match=r"unknown quant_mode 'calibrate'.*'calib'"):
        torch_quantizer("calibrate", nn.Linear(2, 2), torch.randn(1, 2))


def test_export_before_any_forward(tmp_path):
    model, data = model_and_data()
    quantizer = torch_quantizer("calib", model, (data[:4],), output_dir=tmp_path)
    with pytest.raises(NndctError, match="before any calibration forward pass"):
        quantizer.export_quant_config()
    assert not (tmp_path / "quant_info.json").exists()


def test_missing_quant_info(tmp_path):
    model, data = model_and_data()
    with pytest.raises(QuantInfoError, match=r"does not exist.*run calibration first"):
        torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)


def test_corrupted_quant_info(calibrated, tmp_path):
    (tmp_path / "quant_info.json").write_text('{"param": {"DigitsNet::x": [[8, ')
    model, data = model_and_data()
    with pytest.raises(QuantInfoError, match=r"not valid JSON.*corrupted"):
        torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)
    (tmp_path / "quant_info.json").write_text('{"param": {"DigitsNet::x": "eight"}}')
    with pytest.raises(QuantInfoError, match=r"not \[\[bit_width, fix_pos\]\]"):
        torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)


def test_quant_info_from_another_model(calibrated, tmp_path):
    (tmp_path / "quant_info.json").write_bytes((calibrated / "quant_info.json").read_bytes())
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(QuantInfoError) as info:
        torch_quantizer("test", other, (torch.randn(2, 1, 16, 16),), output_dir=tmp_path)
    msg = str(info.value)
    assert "missing" in msg and "not in this model" in msg and "written for model DigitsNet" in msg
    assert "Fix: recalibrate" in msg


def test_state_dict_that_does_not_fit(tmp_path):
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "w.pth")
    model, data = model_and_data()
    with pytest.raises(InputError, match=r"does not fit DigitsNet: missing .* unexpected key"):
        torch_quantizer("calib", model, (data[:4],), state_dict_file=tmp_path / "w.pth", output_dir=tmp_path)


def test_state_dict_file_is_loaded(tmp_path):
    model, data = model_and_data()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    fresh = type(model)(width=8).eval()
    quantizer = torch_quantizer("float", fresh, (data[:4],), state_dict_file=tmp_path / "w.pth", output_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(quantizer.quant_model(data), model(data), atol=1e-5)

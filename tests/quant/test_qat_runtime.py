"""Quantization-aware training on the generated module (quant/qat.py): TQT quantizers on every point.

Started from a post-training calibration, the QAT forward equals test mode bit for bit; gradients reach the
weights and every threshold; a few steps of training lower the loss of a 4-bit digits network.
"""

from __future__ import annotations

import json

import pytest
import torch

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import NndctError
from pytorch_nndct.export.quant_info import read_quant_info
from pytorch_nndct.models.digits import load_digits, pretrained
from pytorch_nndct.quant.qat import attach_tqt, fix_positions, start_from
from pytorch_nndct.quant.runtime import Mode

PLAIN = {"include_cle": False, "include_bias_corr": False}  # QAT's setting (the original turns both off)


def _calibrated(tmp_path, bits: int = 8, config: dict | None = None):
    xtr, ytr, xte, yte = load_digits()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config or PLAIN))
    kw = {"bitwidth_w": bits, "bitwidth_a": bits, "quant_config_file": str(path), "output_dir": str(tmp_path)}
    calib = torch_quantizer("calib", pretrained(), (xtr[:1],), **kw)
    with torch.no_grad():
        calib.quant_model(xtr[:64])
    calib.export_quant_config()
    test = torch_quantizer("test", pretrained(), (xtr[:1],), **kw)
    return calib, test, (xtr, ytr, xte, yte)


def _trainable(quantizer, tmp_path):
    quantizers = attach_tqt(quantizer.quant_model, quantizer.graph, quantizer.plan, quantizer.points)
    table, _ = read_quant_info(tmp_path, quantizer.graph.name)
    assert start_from(quantizers, table) == len(quantizers)
    quantizer.state.mode = Mode.QAT
    return quantizers


def test_started_from_calibration_the_qat_forward_is_test_mode(tmp_path):
    calib, test, (_, _, xte, _) = _calibrated(tmp_path)
    with torch.no_grad():
        expected = test.quant_model(xte)
    quantizers = _trainable(calib, tmp_path)
    names = {n for n, _ in calib.quant_model.named_modules()}
    assert "module_1.output_quantizer" not in names  # the stem conv's output is its ReLU's point
    assert {"module_0.output_quantizer", "module_1.weight_quantizer", "module_1.bias_quantizer"} <= names
    with torch.no_grad():
        assert torch.equal(calib.quant_model(xte), expected)
    table, _ = read_quant_info(tmp_path, calib.graph.name)
    assert fix_positions(quantizers) == {k: table.fix_pos(k) for k in quantizers}


def test_gradients_reach_weights_and_thresholds(tmp_path):
    calib, _, (xtr, ytr, _, _) = _calibrated(tmp_path)
    quantizers = _trainable(calib, tmp_path)
    loss = torch.nn.functional.cross_entropy(calib.quant_model(xtr[:128]), ytr[:128])
    loss.backward()
    grads = {k: q.log_threshold.grad for k, q in quantizers.items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) >= len(grads) // 2
    weights = [p for n, p in calib.quant_model.named_parameters() if n.endswith(".weight")]
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_training_lowers_the_loss_at_four_bits(tmp_path):
    calib, _, (xtr, ytr, xte, yte) = _calibrated(tmp_path, bits=4)
    quantizers = _trainable(calib, tmp_path)
    model = calib.quant_model
    thresholds = [q.log_threshold for q in quantizers.values()]
    others = [p for n, p in model.named_parameters() if "log_threshold" not in n]
    opt = torch.optim.Adam([{"params": others, "lr": 1e-3}, {"params": thresholds, "lr": 1e-2}])

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(xte), yte))

    before = held_out_loss()
    torch.manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(xtr)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    after = held_out_loss()
    print(f"held-out loss at 4 bits: {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


def test_float_scale_points_are_refused_with_the_fix(tmp_path):
    cpu = {**PLAIN, "target_device": "CPU", "overall_quantize_config": {
        "scale_type": "float", "method": "maxmin", "calib_statistic_method": "max"}}  # fmt: skip
    calib, _, _ = _calibrated(tmp_path, config=cpu)
    with pytest.raises(NndctError, match=r"power-of-two per-tensor thresholds.*Fix"):
        attach_tqt(calib.quant_model, calib.graph, calib.plan, calib.points)

"""Accuracy on real data: the digits CNN, trained here, keeps its accuracy when quantized W8A8."""

from __future__ import annotations

import pytest
import torch

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.models.digits import accuracy, train


@pytest.fixture(scope="module")
def trained():
    return train()


def _quantized_accuracy(model, data, out_dir, **bits) -> float:
    xtr, _, xte, yte = data
    calib = torch_quantizer("calib", model, (xtr[:2],), output_dir=out_dir, **bits)
    with torch.no_grad():
        for batch in xtr[:512].split(64):
            calib.quant_model(batch)
    calib.export_quant_config()
    test = torch_quantizer("test", model, (xtr[:2],), output_dir=out_dir, **bits)
    return accuracy(test.quant_model, xte, yte)


def test_digits_w8a8_within_one_point_of_float(trained, tmp_path):
    model, data = trained
    float_acc = accuracy(model, data[2], data[3])
    assert float_acc >= 97.0
    q_acc = _quantized_accuracy(model, data, tmp_path)
    assert q_acc >= float_acc - 1.0, f"float {float_acc:.2f}%, W8A8 {q_acc:.2f}%"


@pytest.mark.parametrize("bitwidth_w", [8, 4])
def test_equalization_and_bias_correction_do_not_lose_accuracy(trained, tmp_path, bitwidth_w):
    model, data = trained
    config = tmp_path / "neither.json"
    config.write_text('{"include_cle": false, "include_bias_corr": false}')
    neither = _quantized_accuracy(model, data, tmp_path / "neither", bitwidth_w=bitwidth_w, quant_config_file=config)
    defaults = _quantized_accuracy(model, data, tmp_path / "defaults", bitwidth_w=bitwidth_w)
    assert defaults >= neither, f"W{bitwidth_w}A8: defaults {defaults:.2f}%, neither {neither:.2f}%"

"""torch_quantizer on different architectures: calibrate, export, test; sane accuracy, fused kernels on."""

from __future__ import annotations

import pytest
import torch
import torchvision

from helpers import prepare_model, sqnr_db
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.quant import kernels

# lower bounds well below what each model reaches (random weights, W8A8, 4 calibration images)
MODELS = {"resnet18": 18.0, "mobilenet_v2": 20.0, "googlenet": 25.0, "convnext_tiny": 18.0, "swin_t": 15.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_calibrate_then_test(name, tmp_path):
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), (3, 224, 224))
    x = torch.randn(4, 3, 224, 224)
    calib = torch_quantizer("calib", model, (x[:2],), output_dir=tmp_path)
    with torch.no_grad():
        calib.quant_model(x)
    calib.export_quant_config()
    test = torch_quantizer("test", model, (x[:2],), output_dir=tmp_path)
    with torch.no_grad():
        ref, out = model(x), test.quant_model(x)
    assert torch.isfinite(out).all()
    assert sqnr_db(ref, out) > MODELS[name]
    assert not kernels.failed()

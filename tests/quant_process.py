"""Run one quantizer step in a fresh process (used by tests/test_apis.py).

python tests/quant_process.py calib|test OUTPUT_DIR [RESULT_FILE]
"""

from __future__ import annotations

import sys

import torch

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.models.digits import DigitsNet
from small_models import _randomize_bn


def model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _randomize_bn(DigitsNet(width=8))
    return model, torch.randn(64, 1, 16, 16)


def main() -> None:
    mode, out_dir = sys.argv[1], sys.argv[2]
    model, data = model_and_data()
    quantizer = torch_quantizer(mode, model, (data[:4],), output_dir=out_dir)
    with torch.no_grad():
        if mode == "calib":
            for batch in data.split(16):
                quantizer.quant_model(batch)
            quantizer.export_quant_config()
        else:
            torch.save(quantizer.quant_model(data), sys.argv[3])


if __name__ == "__main__":
    main()

"""Accuracy of the digits CNN (trained here on scikit-learn's digits): float, W8A8 and W4A8.

    python benchmarks/digits_accuracy.py

Calibration on 512 training images, evaluation on the 540 held-out test images.
"""

from __future__ import annotations

import logging
import sys
import tempfile

import torch

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.models.digits import accuracy, train


def quantized_accuracy(model, data, bitwidth_w: int, bitwidth_a: int) -> float:
    xtr, _, xte, yte = data
    with tempfile.TemporaryDirectory() as out:
        bits = {"bitwidth_w": bitwidth_w, "bitwidth_a": bitwidth_a}
        calib = torch_quantizer("calib", model, (xtr[:2],), output_dir=out, **bits)
        with torch.no_grad():
            for batch in xtr[:512].split(64):
                calib.quant_model(batch)
        calib.export_quant_config()
        test = torch_quantizer("test", model, (xtr[:2],), output_dir=out, **bits)
        return accuracy(test.quant_model, xte, yte)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    model, data = train()
    float_acc = accuracy(model, data[2], data[3])
    print("| model | float top-1 (%) | W8A8 top-1 (%) | W4A8 top-1 (%) |")
    print("|---|---|---|---|")
    w8 = quantized_accuracy(model, data, 8, 8)
    w4 = quantized_accuracy(model, data, 4, 8)
    print(f"| DigitsNet | {float_acc:.2f} | {w8:.2f} | {w4:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

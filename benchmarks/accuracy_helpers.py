"""Equalization, bias correction and fast finetune on trained depthwise-separable CNNs, and fast finetune's cost.

    python benchmarks/accuracy_helpers.py [--skip-resnet]

Models trained here on scikit-learn's digits (no download): the built-in DigitsNet (its shipped weights)
and a MobileNetV2-style net (inverted residual blocks with ReLU6, trained in this script). For each:
float top-1; W8A8 with neither helper and with the defaults (cross-layer equalization + bias
correction); W4A8 with the defaults, and with fast finetune added. Then resnet18 (random weights, BN
statistics populated) fast-finetuned at batch 8 on 64 images: time and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import prepare_model
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.models.digits import fit, load_digits, pretrained


def evaluate(model, x, y, batch: int = 64):
    """(top1, top5, loss), the seed's evaluate; fast_finetune uses the last item."""
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    top1 = 100.0 * float((out.argmax(1) == y).float().mean())
    return top1, top1, F.cross_entropy(out, y).item()


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class DigitsMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2), InvertedResidual(24, 24, 1),
            InvertedResidual(24, 32, 2), InvertedResidual(32, 32, 1),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15) -> nn.Module:
    torch.manual_seed(0)
    return fit(model, x, y, epochs)


def quantized_top1(model, data, bw_w: int, helpers: bool, finetune: bool) -> float:
    xtr, ytr, xte, yte = data
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"include_cle": helpers, "include_bias_corr": helpers}))
        kw = {"output_dir": tmp, "bitwidth_w": bw_w, "quant_config_file": config}
        q = torch_quantizer("calib", model, (xtr[:2],), **kw)
        if finetune:
            q.fast_finetune(evaluate, (q.quant_model, xtr[:256], ytr[:256]))
        evaluate(q.quant_model, xtr[:512], ytr[:512])
        q.export_quant_config()
        return evaluate(torch_quantizer("test", model, (xtr[:2],), **kw).quant_model, xte, yte)[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    data = load_digits()
    models = {"DigitsNet": pretrained(), "DigitsMobileNetV2": train(DigitsMobileNetV2(), data[0], data[1])}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits test split: {len(data[3])} images")
    print("| model | float | W8A8 neither | W8A8 CLE+BC | W4A8 CLE+BC | W4A8 CLE+BC+finetune | W4A8 drop recovered |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        fl = evaluate(model, data[2], data[3])[0]
        w8n = quantized_top1(model, data, 8, False, False)
        w8 = quantized_top1(model, data, 8, True, False)
        w4 = quantized_top1(model, data, 4, True, False)
        w4ft = quantized_top1(model, data, 4, True, True)
        drop = fl - w4
        recovered = "no drop" if drop <= 0 else f"{100 * (w4ft - w4) / drop:.0f} %"
        print(f"| {name} | {fl:.2f} | {w8n:.2f} | {w8:.2f} | {w4:.2f} | {w4ft:.2f} | {recovered} |", flush=True)
    if not args.skip_resnet:
        torch.manual_seed(0)
        model = prepare_model(torchvision.models.resnet18(), (3, 224, 224))
        g = torch.Generator().manual_seed(1)
        images = torch.randn(64, 3, 224, 224, generator=g)
        labels = model(images).argmax(1).detach()

        def run(m, x, y):
            return evaluate(m, x, y, batch=8)

        with tempfile.TemporaryDirectory() as tmp:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            q = torch_quantizer("calib", model, (images[:2],), output_dir=tmp)
            start = time.perf_counter()
            q.fast_finetune(run, (q.quant_model, images, labels))
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\nresnet18 fast finetune, batch 8, 64 images: {seconds:.0f} s, peak process memory {peak:.2f} GiB "
              f"({before:.2f} GiB before; goal < 4 GiB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do the default accuracy helpers ever hurt? Bias correction and cross-layer equalization, each on and off.

    python benchmarks/helpers_on_off.py [--models digits,digits_mbv2,resnet18,mobilenet_v2] [--samples 16,64]

For each model and calibration size, the same calibration images are quantized with the defaults (DPU
target, both helpers on), with bias correction off, and with equalization off; the table prints the
output SQNR against the float model on held-out inputs (digits models: top-1 % on the 540 held-out
digits as well) and the change from switching each helper on. The goal: switching a helper on never
loses more than 0.1 dB. Random-weight torchvision models get random inputs; the digits models are
trained (DigitsNet: its shipped weights; the MobileNetV2-style net: trained here as in
accuracy_helpers.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import prepare_model, sqnr_db
from pytorch_nndct.apis import torch_quantizer

VARIANTS = {"defaults": (True, True), "bias corr off": (True, False), "equalization off": (False, True)}


def quantized_outputs(model, calib: torch.Tensor, evals: torch.Tensor, cle: bool, bc: bool, batch: int) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"include_cle": cle, "include_bias_corr": bc}))
        q = torch_quantizer("calib", model, (calib[:1],), output_dir=tmp, quant_config_file=str(config))
        with torch.no_grad():
            for i in range(0, len(calib), batch):
                q.quant_model(calib[i : i + batch])
        q.export_quant_config()
        q = torch_quantizer("test", model, (calib[:1],), output_dir=tmp, quant_config_file=str(config))
        with torch.no_grad():
            return torch.cat([q.quant_model(evals[i : i + batch]) for i in range(0, len(evals), batch)])


def load(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(model, calibration pool, evaluation inputs, evaluation labels or None)."""
    if name in ("digits", "digits_mbv2"):
        from accuracy_helpers import DigitsMobileNetV2, train

        from pytorch_nndct.models.digits import load_digits, pretrained

        xtr, ytr, xte, yte = load_digits()
        if name == "digits":
            model = pretrained()
        else:
            torch.manual_seed(0)
            model = train(DigitsMobileNetV2(), xtr, ytr)
        return model.eval(), xtr, xte, yte
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), (3, 224, 224))
    return model, torch.randn(64, 3, 224, 224), torch.randn(16, 3, 224, 224), None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,digits_mbv2,resnet18,mobilenet_v2")
    parser.add_argument("--samples", default="16,64")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a subset of: " + ", ".join(VARIANTS))
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print("| model | calib samples | variant | SQNR dB | top-1 % |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name in opts.models.split(","):
        model, pool, evals, labels = load(name)
        with torch.no_grad():
            ref = model(evals)
        for n in (int(s) for s in opts.samples.split(",")):
            results = {}
            for variant in opts.variants.split(","):
                cle, bc = VARIANTS[variant]
                out = quantized_outputs(model, pool[:n], evals, cle, bc, batch=16 if labels is None else 32)
                db = sqnr_db(ref, out)
                top1 = f"{100.0 * float((out.argmax(1) == labels).float().mean()):.2f}" if labels is not None else "-"
                results[variant] = db
                print(f"| {name} | {n} | {variant} | {db:.2f} | {top1} |", flush=True)
            for helper, variant in (("bias correction", "bias corr off"), ("equalization", "equalization off")):
                if variant not in results or "defaults" not in results:
                    continue
                gain = results["defaults"] - results[variant]
                worst = min(worst, gain)
                print(f"| {name} | {n} | {helper} on: {gain:+.2f} dB | | |", flush=True)
    print(f"\nlargest loss from switching a helper on: {-worst:.2f} dB (goal: at most 0.1 dB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

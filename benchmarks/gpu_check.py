"""The CUDA path: same fix positions and outputs within 1 LSB as the CPU run, and GPU speed ratios.

    python benchmarks/gpu_check.py [--device cuda] [--batch_size 64] [--batches 4] [resnet50 mobilenet_v2]

For each model (random weights, BN statistics populated): calibrate on the CPU and on the device with the
same batches; compare every fix position; run test mode on both and compare the outputs in LSBs of the
output's fix position. Then print calibration / float and test / float on the device (best of 3, with
synchronisation). Exits non-zero if a fix position differs or an output is more than 1 LSB off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import prepare_model
from pytorch_nndct.apis import torch_quantizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, batches, device, repeats: int = 3) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            for b in batches:
                fn(b)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def calibrate(model, example, batches, out_dir, device) -> dict:
    q = torch_quantizer("calib", model, (example,), output_dir=out_dir, device=device)
    with torch.no_grad():
        for b in batches:
            q.quant_model(b.to(device))
    q.export_quant_config()
    return json.loads((Path(out_dir) / "quant_info.json").read_text())


def check_model(name: str, device: torch.device, batch: int, n: int) -> bool:
    size = 299 if name == "inception_v3" else 224
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), (3, size, size))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]
    example = batches[0][:2]
    ok = True
    with tempfile.TemporaryDirectory() as cpu_dir, tempfile.TemporaryDirectory() as dev_dir:
        cpu_info = calibrate(model, example, batches, cpu_dir, torch.device("cpu"))
        dev_info = calibrate(model, example, batches, dev_dir, device)
        diffs = [
            f"{k}: cpu {cpu_info[s][k]} {device.type} {dev_info[s][k]}"
            for s in ("param", "output")
            for k in cpu_info[s]
            if cpu_info[s][k] != dev_info[s].get(k)
        ]
        print(f"{name}: {len(diffs)} fix position(s) differ between cpu and {device.type}")
        for line in diffs[:10]:
            print("   ", line)
        ok &= not diffs
        cpu_q = torch_quantizer("test", model, (example,), output_dir=cpu_dir).quant_model
        dev_q = torch_quantizer("test", model, (example,), output_dir=dev_dir, device=device).quant_model
        out_key = list(cpu_info["output"])[-1]
        fp = cpu_info["output"][out_key][0][1]
        with torch.no_grad():
            a = cpu_q(batches[0])
            b = dev_q(batches[0].to(device)).cpu()
        lsb = (a - b).abs().max().item() * 2.0**fp
        exact = (a == b).float().mean().item() * 100
        print(f"{name}: test-mode outputs differ by at most {lsb:g} LSB of {out_key} (fp {fp}); {exact:.2f}% equal")
        ok &= lsb <= 1.0
        model_dev = model.to(device)
        dev_batches = [b.to(device) for b in batches]
        calib_q = torch_quantizer("calib", model_dev, (example.to(device),), output_dir=dev_dir, device=device)
        with torch.no_grad():
            model_dev(dev_batches[0])
            calib_q.quant_model(dev_batches[0])
            dev_q(dev_batches[0])
        t_float = timed(model_dev, dev_batches, device)
        t_calib = timed(calib_q.quant_model, dev_batches, device)
        t_test = timed(dev_q, dev_batches, device)
        print(
            f"| {name} | {device} | batch {batch} | calib/float {t_calib / t_float:.2f} | test/float "
            f"{t_test / t_float:.2f} |",
            flush=True,
        )
        model.to("cpu")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}"
    )
    ok = all([check_model(name, device, args.batch_size, args.batches) for name in args.models])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

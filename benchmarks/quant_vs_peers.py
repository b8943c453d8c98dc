"""Output SQNR of ours (defaults) beside torchao PT2E and Brevitas, power-of-two per-tensor where they allow.

    python benchmarks/quant_vs_peers.py [resnet18 mobilenet_v2 mobilenet_v3_large efficientnet_b0] [--bn exact]

Random weights with BN statistics populated (`--bn blend`, the default and the setup of quant_vs_pt2e.py,
or `--bn exact`: see tests/helpers.prepare_model), 8 calibration batches of 8 and one evaluation batch of
8, the same for every tool. Peers:
- PT2E pow2: XNNPACKQuantizer's per-tensor symmetric int8 config (HistogramObserver for activations,
  MinMaxObserver for weights) with every scale rounded up to a power of two; float biases;
- Brevitas: its FlexML target (`preprocess_for_flexml_quantize` with its graph equalization,
  `quantize_flexml`: power-of-two per-tensor scales), calibration then bias correction. Unlike the DPU
  (and ours) it keeps post-ReLU activations unsigned (one more bit) and wider biases;
- for reference, PT2E with float scales (not a power-of-two scheme).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_vs_pt2e import ours, pt2e, setup

from helpers import sqnr_db


def brevitas(model, calib, test_x):
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.target.flexml import preprocess_for_flexml_quantize, quantize_flexml

    q = quantize_flexml(preprocess_for_flexml_quantize(copy.deepcopy(model), calib[0][:1])).eval()
    with torch.no_grad():
        with calibration_mode(q):
            for b in calib:
                q(b)
        with bias_correction_mode(q):
            for b in calib:
                q(b)
        return q(test_x)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "models", nargs="*", default=["resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
    )
    parser.add_argument("--bn", choices=["blend", "exact"], default="blend", help="how BN statistics are populated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    import brevitas as brevitas_pkg
    import torchao

    print(
        f"torch {torch.__version__}, torchao {torchao.__version__}, brevitas {brevitas_pkg.__version__}, BN {args.bn}"
    )
    print(
        "| model | SQNR ours (dB) | SQNR PT2E pow2 (dB) | SQNR Brevitas FlexML (dB) | ours - best pow2 peer (dB) "
        "| SQNR PT2E float scales (dB) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, calib, test_x = setup(name, bn_stats=args.bn)
        with torch.no_grad():
            ref = model(test_x)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            o = sqnr_db(ref, ours(model, calib[0][:2], calib, test_x, tmp)[0])
        p2 = sqnr_db(ref, pt2e(model, calib[0], calib, test_x, power_of_two=True)[0])
        b = sqnr_db(ref, brevitas(model, calib, test_x))
        pf = sqnr_db(ref, pt2e(model, calib[0], calib, test_x)[0])
        print(f"| {name} | {o:.2f} | {p2:.2f} | {b:.2f} | {o - max(p2, b):+.2f} | {pf:.2f} |", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

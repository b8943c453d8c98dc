"""Output SQNR of ours (defaults) beside torchao PT2E and Brevitas, power-of-two per-tensor where they allow.

    python benchmarks/quant_vs_peers.py [resnet18 mobilenet_v2 mobilenet_v3_large efficientnet_b0]

Random weights with BN statistics populated, 8 calibration batches of 8 and one evaluation batch of 8,
the same for every tool (the setup of quant_vs_pt2e.py). Peers:
- PT2E: XNNPACKQuantizer, per-tensor symmetric int8, float scales, int32 biases;
- Brevitas: its FlexML target (`preprocess_for_flexml_quantize` with its graph equalization,
  `quantize_flexml`: power-of-two per-tensor scales), calibration then bias correction. Unlike the DPU
  (and ours) it keeps post-ReLU activations unsigned (one more bit) and wider biases.
"""

from __future__ import annotations

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
    names = sys.argv[1:] or ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    import brevitas as brevitas_pkg
    import torchao

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, brevitas {brevitas_pkg.__version__}")
    print("| model | SQNR ours (dB) | SQNR PT2E sym (dB) | SQNR Brevitas FlexML (dB) | ours - best peer (dB) |")
    print("|---|---|---|---|---|")
    for name in names:
        model, calib, test_x = setup(name)
        with torch.no_grad():
            ref = model(test_x)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            o = sqnr_db(ref, ours(model, calib[0][:2], calib, test_x, tmp)[0])
        p = sqnr_db(ref, pt2e(model, calib[0], calib, test_x)[0])
        b = sqnr_db(ref, brevitas(model, calib, test_x))
        print(f"| {name} | {o:.2f} | {p:.2f} | {b:.2f} | {o - max(p, b):+.2f} |", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

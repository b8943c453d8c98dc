"""Every torchvision classification model through trace -> optimize -> write_module -> load_module.

Prints a pass/fail table with the regenerated model's SQNR against the float model at the traced batch
size (2) and at another (3), and the capture + optimize + codegen time. Random weights, BN statistics
populated by train-mode forwards on random data.

    python benchmarks/model_zoo.py               # all models (about 20 minutes on 2 cores)
    python benchmarks/model_zoo.py resnet18 vit_b_16
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pytorch_nndct as nd
from helpers import REGEN_SQNR_DB, prepare_model, sqnr_db


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def run_one(name: str) -> tuple[str, float, float, float, int, str, int]:
    size = input_size(name)
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), size)
    t0 = time.perf_counter()
    graph = nd.trace(model, torch.randn(2, *size))
    nd.optimize(graph)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = nd.load_module(nd.write_module(graph, tmp))
        seconds = time.perf_counter() - t0
        results = []
        with torch.no_grad():
            for batch in (2, 3):
                x = torch.randn(batch, *size)
                results.append(sqnr_db(model(x), loaded(x)))
    bns = sum(1 for n in graph.nodes if n.op is nd.Op.BATCH_NORM)
    floats = sum(1 for n in graph.nodes if n.op is nd.Op.ATEN)
    ok = all(r > REGEN_SQNR_DB for r in results) and bns == 0
    return ("pass" if ok else "FAIL"), results[0], results[1], seconds, len(graph.nodes), "", floats


def main(names: list[str]) -> int:
    logging.basicConfig(level=logging.ERROR)
    names = names or torchvision.models.list_models(module=torchvision.models)
    print("| model | result | SQNR b=2 (dB) | SQNR b=3 (dB) | nodes | float-only ops | seconds | note |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        try:
            status, s2, s3, sec, nodes, note, floats = run_one(name)
        except Exception as exc:  # report and continue with the next model
            status, s2, s3, sec, nodes, floats = "FAIL", float("nan"), float("nan"), 0.0, 0, 0
            note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
        failed += status != "pass"
        print(
            f"| {name} | {status} | {s2:.1f} | {s3:.1f} | {nodes} | {floats} | {sec:.1f} | {note} |",
            flush=True,
        )
    print(
        f"\n{len(names) - failed} of {len(names)} models pass (SQNR > {REGEN_SQNR_DB} dB at both batch sizes, "
        "no BatchNorm left after a conv)."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

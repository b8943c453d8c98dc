"""Capture + optimize + codegen time against graph size, for resnet18/50/101/152.

    python benchmarks/capture_time.py

Prints one row per model: node count after capture, seconds for trace, optimize and write_module (median
of 3 runs), and seconds per 100 nodes, which stays about constant when the time grows linearly.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time

import torch
import torchvision

import pytorch_nndct as nd

MODELS = ["resnet18", "resnet50", "resnet101", "resnet152"]


def measure(name: str, repeats: int = 3) -> tuple[int, float, float, float]:
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    traces, opts, gens = [], [], []
    nodes = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = nd.trace(model, x)
        t1 = time.perf_counter()
        nodes = len(graph.nodes)
        nd.optimize(graph)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            nd.write_module(graph, tmp)
        t3 = time.perf_counter()
        traces.append(t1 - t0)
        opts.append(t2 - t1)
        gens.append(t3 - t2)
    return nodes, statistics.median(traces), statistics.median(opts), statistics.median(gens)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | nodes | trace s | optimize s | codegen s | total s | s per 100 nodes |")
    print("|---|---|---|---|---|---|---|")
    for name in MODELS:
        nodes, tr, op, gen = measure(name)
        total = tr + op + gen
        print(
            f"| {name} | {nodes} | {tr:.2f} | {op:.3f} | {gen:.2f} | {total:.2f} | {100 * total / nodes:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

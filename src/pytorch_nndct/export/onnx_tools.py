"""Options of `export_onnx_model`: run the exported model in onnxruntime on a recorded sample and dump every
layer (`dump_layers`), compare it with the simulation (`check_model`), or simplify it (`opt_graph`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codegen import write_atomic
from ..errors import InputError, NndctError

__all__ = ["check_onnx", "dump_onnx_layers", "run_onnx", "simplify_onnx"]

log = logging.getLogger("pytorch_nndct")


def _session(model: Any) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError("dump_layers and check_model run onnxruntime: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every layer as written
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(model: Any, sample: tuple) -> dict[str, np.ndarray]:
    leaves = [t for t in torch.utils._pytree.tree_leaves(sample) if isinstance(t, torch.Tensor)]
    names = [i.name for i in model.graph.input]
    if len(names) != len(leaves):
        raise NndctError(f"the ONNX model takes {len(names)} input(s), the recorded sample has {len(leaves)}")
    return {n: t.detach().cpu().float().numpy() for n, t in zip(names, leaves)}


def run_onnx(model: Any, sample: tuple, all_layers: bool = False) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for `sample` by name; with `all_layers`, every node output too."""
    if all_layers:
        import onnx

        model = onnx.ModelProto.FromString(model.SerializeToString())
        known = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for name in node.output:
                if name and name not in known:
                    model.graph.output.append(onnx.ValueInfoProto(name=name))
                    known.add(name)
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, _feeds(model, sample))))


def dump_onnx_layers(model: Any, sample: tuple, folder: str | os.PathLike) -> Path:
    """`<folder>/<layer>.bin`: each node output for the sample, raw in its own dtype (as the original)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, value in run_onnx(model, sample, all_layers=True).items():
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        files[out / f"{safe}.bin"] = np.ascontiguousarray(value).tobytes()
    write_atomic(files)
    return out


def check_onnx(model: Any, sample: tuple, quant_model: torch.nn.Module) -> float:
    """Largest |onnxruntime - simulation| over the outputs for the sample (logged; also returned)."""
    got = run_onnx(model, sample)
    with torch.no_grad():
        expected = quant_model(*sample)
    leaves = [t for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    worst = 0.0
    for value, ref in zip(got.values(), leaves):  # the graph outputs, in order (named output_k or by dict key)
        worst = max(worst, float(np.abs(value - ref.detach().cpu().float().numpy()).max(initial=0.0)))
    log.info("check_model: onnxruntime vs simulation, largest |difference| %.6g", worst)
    return worst


def simplify_onnx(model: Any) -> Any:
    """opt_graph: onnxsim's simplification (constant folding, dead nodes), checked by onnxsim itself."""
    try:
        import onnxsim
    except ImportError as exc:
        raise InputError("export_onnx_model(opt_graph=True) needs onnxsim: pip install onnxsim") from exc
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise NndctError("onnxsim could not validate the simplified model; export without opt_graph=True")
    return simplified

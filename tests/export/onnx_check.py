"""Compare an exported ONNX model with the simulation, point by point and end to end.

Point by point ("teacher forcing"): onnxruntime runs once and returns every quantization point; the
simulation then runs with each point's output replaced by onnxruntime's, so each point is computed from the
same inputs in both and any difference is that point's own (a tie rounded the other way, float summation
order). Integer points are compared as integer codes (value / step, rounded: a difference of one is one
LSB); bfloat16/float16 points in units of their type's precision at the value, with a floor of 2^-20 of the
tensor's largest value (float32 summation noise where a sum cancels to almost nothing). End to end: both run
freely and the final output is compared.

The teacher-forced run is at ORT_ENABLE_BASIC by default (the Q/DQ graph as written; the extra outputs
would stop most fusions anyway); the end-to-end run is at ORT_ENABLE_ALL, what users get: Q/DQ fused into
integer kernels (U8U8, exact on every x86 CPU; see export/onnx_builder.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pytorch_nndct.quant.runtime import ActPoint
from pytorch_nndct.quant.spec import DataType

_REL = {DataType.BFLOAT16: 2.0**-7, DataType.FLOAT16: 2.0**-10}  # one unit in the last place, relative
_NOISE = 2.0**-20  # float32 summation noise, relative to a tensor's largest value


@dataclass
class Agreement:
    worst_lsb: float = 0.0  # integer points, teacher forced: max |diff| / step
    worst_rel: float = 0.0  # float-type points, teacher forced: max |diff| / (|value| * ulp)
    points: int = 0
    unequal: dict[str, float] = field(default_factory=dict)  # point -> its max diff (in LSB or ulp)
    end_lsb: float | None = None  # final output, free running, in LSB of its step (None: not an int point)
    end_abs: float = 0.0
    end_equal: float = 0.0  # fraction of final output elements that are equal


def session(path, level: str = "BASIC", extra: list[str] | None = None) -> ort.InferenceSession:
    model = onnx.load(str(path))
    for name in extra or []:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _point_names(quantizer, path) -> dict[str, str]:
    """Output point key -> the ONNX value holding it."""
    produced = {o for n in onnx.load(str(path)).graph.node for o in n.output}
    names = {}
    for key, point in quantizer.points.items():
        if not isinstance(point, ActPoint):
            continue
        for suffix in ("_dq", "_float"):
            if key + suffix in produced:
                names[key] = key + suffix
    return names


def compare(quantizer, path, x: torch.Tensor | tuple[torch.Tensor, ...], level: str = "BASIC") -> Agreement:
    """`x`: the input, or a tuple of the inputs of a model with several (fed in the ONNX inputs' order)."""
    xs = x if isinstance(x, tuple) else (x,)
    names = _point_names(quantizer, path)
    keys = list(names)
    sess = session(path, level, [names[k] for k in keys])
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), xs, strict=True)}
    result = sess.run(None, feed)
    ort_points = dict(zip(keys, result[1:], strict=True))
    final = session(path, "ALL").run(None, feed)[0]
    report = Agreement()
    model = quantizer.quant_model
    with torch.no_grad():
        simulated = model(*xs).numpy()
    _end_to_end(quantizer, report, simulated, final)
    index = {n.name: k for k, n in enumerate(quantizer.graph.nodes)}
    seen: dict[str, np.ndarray] = {}
    hooks = []
    for key in keys:
        sub = getattr(model, f"module_{index[key]}", None)
        if sub is None:
            continue

        def force(module, args, output, key=key):
            seen[key] = output.detach().numpy().copy()
            return torch.from_numpy(ort_points[key].copy()).reshape(output.shape)

        hooks.append(sub.register_forward_hook(force))
    try:
        with torch.no_grad():
            model(*xs)
    finally:
        for h in hooks:
            h.remove()
    for key, sim in seen.items():
        point, got = quantizer.points[key], ort_points[key].reshape(sim.shape).astype(np.float64)
        sim = sim.astype(np.float64)
        report.points += 1
        if point.spec.is_int:
            step = point.step()
            worst = float(np.abs(np.rint(sim / step) - np.rint(got / step)).max()) if step else 0.0
            report.worst_lsb = max(report.worst_lsb, worst)
        else:
            v = np.maximum(np.abs(sim), np.abs(got))
            bound = v * _REL.get(point.spec.dtype, 2.0**-23) + _NOISE * float(v.max()) + np.finfo(np.float32).tiny
            worst = float((np.abs(sim - got) / bound).max())
            report.worst_rel = max(report.worst_rel, worst)
        if worst > 0:
            report.unequal[key] = worst
    return report


def _end_to_end(quantizer, report: Agreement, simulated: np.ndarray, final: np.ndarray) -> None:
    diff = np.abs(simulated.astype(np.float64) - final)
    report.end_abs = float(diff.max())
    report.end_equal = float((simulated == final).mean())
    key = quantizer.plan.tensor_point.get(quantizer.graph.output_nodes[0].name)
    point = quantizer.points.get(key) if key is not None else None
    if isinstance(point, ActPoint) and point.spec.is_int and point.step():
        report.end_lsb = report.end_abs / point.step()

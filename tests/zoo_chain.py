"""The whole export chain on one model, shared by tests/test_model_zoo.py and benchmarks/model_zoo.py --batch1:
captured from a batch-1 example, calibrated for the DPU and exported with export_xmodel (the file parsed back
with our serial_v2 schema); calibrated for ONNX (CPU target, ties to even, as onnxruntime rounds), exported
with export_onnx_model and run in onnxruntime at batch 3 against the simulation.

`inputs(n)` makes a batch of n example inputs (a tuple): `images(size)` for image models, or the model's own
(tests/minilm.py's token ids and masks)."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from onnx_check import compare

import pytorch_nndct as nd
from helpers import PeakRss, flat_tensors

ONNX_CONFIG = {
    "target_device": "CPU",
    "tensor_quantize_config": {"input": {"round_mode": "half_even"}, "activation": {"round_mode": "half_even"}},
}
Inputs = Callable[[int], tuple[torch.Tensor, ...]]
_NO_LOWERING = re.compile(r"(\w+) has no ONNX lowering|: ([^:]*) is not exported to ONNX")


def images(size: tuple[int, ...]) -> Inputs:
    """Random images of shape `size` (channels, height, width)."""
    return lambda n: (torch.randn(n, *size),)


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


def xmodel_batch1(model: torch.nn.Module, inputs: Inputs) -> tuple[str, float]:
    """Calibrate for the DPU from a batch-1 example, export_xmodel, parse it back with our serial_v2 schema:
    (ops and custom ops in the file, the export's peak memory above the RSS before it in bytes)."""
    from pytorch_nndct.apis import torch_quantizer
    from pytorch_nndct.export.xir_schema import schema

    with tempfile.TemporaryDirectory() as tmp:
        quantizer = torch_quantizer("calib", model, inputs(1), output_dir=tmp)
        with torch.no_grad():
            quantizer.quantize(quantizer.quant_model, inputs(3))
            quantizer.test(quantizer.quant_model, inputs(1))
        with PeakRss() as memory:
            path = quantizer.export_xmodel()
        ops = schema().Graph.FromString(path.read_bytes()).op_node
        custom = sum(op.op_type.startswith("nndct_") for op in ops)
        return f"{len(ops)} ops" + (f", {custom} custom" if custom else ""), memory.extra


def onnx_batch1(model: torch.nn.Module, inputs: Inputs) -> tuple[str, float, float, float]:
    """Calibrate from a batch-1 example, export to ONNX, run onnxruntime at batch 3: (status, LSB vs simulation
    end to end (nan where an output is computed in float after the last point), the worst point's LSB
    teacher-forced (each point computed by onnxruntime from the simulation's inputs; measured where the
    end-to-end difference passes 1 LSB or is not in LSB), the export's peak memory above the RSS
    before it in bytes)."""
    import onnxruntime as ort

    from pytorch_nndct.apis import torch_quantizer

    example = inputs(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "onnx_config.json"
        config.write_text(json.dumps(ONNX_CONFIG))
        calib = torch_quantizer("calib", model, example, output_dir=tmp, quant_config_file=config)
        with torch.no_grad():
            calib.quant_model(*inputs(3))
        calib.export_quant_config()
        del calib
        test = torch_quantizer("test", model, example, output_dir=tmp, quant_config_file=config)
        x = inputs(3)
        with torch.no_grad():
            simulated = flat_tensors(test.quant_model(*x))
        with PeakRss() as memory:
            path = test.export_onnx_model()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), x, strict=True)})
        lsb, float_output = 0.0, False
        for out, sim, node in zip(outs, simulated, test.graph.output_nodes, strict=True):
            key = test.plan.tensor_point.get(node.name)
            if key is None:  # computed in float after the last point (MiniLM's normalisation): no LSB to count
                float_output = True
                continue
            lsb = max(lsb, float(np.abs(out - sim.numpy()).max() * 2.0 ** test.table.outputs[key].fix_pos))
        forced = lsb
        if (lsb > 1 or float_output) and len(simulated) == 1:  # every point from the same inputs
            del session
            forced = compare(test, path, x).worst_lsb
        if float_output:
            lsb = float("nan")
        return "ok", lsb, forced, memory.extra

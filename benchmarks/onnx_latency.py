"""onnxruntime latency of our QDQ int8 export vs the same graph in float32, at batch 1 and 8.

    python benchmarks/onnx_latency.py [resnet18 mobilenet_v2]

Random weights with BN statistics populated, calibrated on 2 batches of 8. Both models come from the same
optimized graph (batch-norm folded), so the ratio isolates quantization. Median of 20 runs after 3 warm-up
runs, CPUExecutionProvider, default session options. Our export stores the int8 weights as uint8 + 128
(onnxruntime's U8U8 kernels); the "U8S8" columns rewrite them as int8 (its U8S8 kernels, which saturate
int16 pair sums on CPUs without VNNI) and show the cost in accuracy: the largest difference from our
simulation, in LSB of the output, on the batch timed.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import prepare_model
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.export.onnx_qdq import build_onnx


def latency(path: str, x: torch.Tensor, runs: int = 20) -> float:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def as_u8s8(path: str, out: str) -> str:
    """The same model with the uint8 + 128 weights written as int8 with zero point 0."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if src is None or src.data_type != onnx.TensorProto.UINT8 or len(src.dims) < 2:
            continue
        signed = (numpy_helper.to_array(src).astype(np.int16) - 128).astype(np.int8)
        model.graph.initializer.append(numpy_helper.from_array(signed, src.name + "_s8"))
        model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), src.name + "_s8_zero"))
        node.input[0], node.input[2] = src.name + "_s8", src.name + "_s8_zero"
    onnx.save(model, out)
    return out


def run(path: str, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    names = sys.argv[1:] or ["resnet18", "mobilenet_v2"]
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | batch | fp32 ms | int8 QDQ ms | speed-up | LSB vs simulation | U8S8 ms | U8S8 speed-up "
          "| U8S8 LSB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        torch.manual_seed(0)
        model = prepare_model(torchvision.models.get_model(name), (3, 224, 224))
        with tempfile.TemporaryDirectory() as tmp:
            calib = torch_quantizer("calib", model, (torch.randn(2, 3, 224, 224),), output_dir=tmp)
            with torch.no_grad():
                for _ in range(2):
                    calib.quant_model(torch.randn(8, 3, 224, 224))
            calib.export_quant_config()
            test = torch_quantizer("test", model, (torch.randn(2, 3, 224, 224),), output_dir=tmp)
            int8_path = str(test.export_onnx_model())
            fp32_path = str(Path(tmp) / "fp32.onnx")
            Path(fp32_path).write_bytes(
                build_onnx(test.export_graph(), test.plan, test.table, quantized=False).SerializeToString()
            )
            s8_path = as_u8s8(int8_path, str(Path(tmp) / "u8s8.onnx"))
            out_key = test.plan.tensor_point[test.graph.output_nodes[0].name]
            lsb_per_unit = 2.0 ** test.table.outputs[out_key].fix_pos
            for batch in (1, 8):
                x = torch.randn(batch, 3, 224, 224)
                with torch.no_grad():
                    sim = test.quant_model(x)
                f, q, s8 = latency(fp32_path, x), latency(int8_path, x), latency(s8_path, x)
                err, err8 = ((run(p, x) - sim).abs().max().item() * lsb_per_unit for p in (int8_path, s8_path))
                print(f"| {name} | {batch} | {f:.1f} | {q:.1f} | {f / q:.2f}x | {err:g} | {s8:.1f} | {f / s8:.2f}x | "
                      f"{err8:g} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

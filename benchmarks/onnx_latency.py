"""onnxruntime latency of our QDQ int8 export vs the same graph in float32, at batch 1 and 8.

    python benchmarks/onnx_latency.py [resnet18 mobilenet_v2]

Random weights with BN statistics populated, calibrated on 2 batches of 8. Both models come from the same
optimized graph (batch-norm folded), so the ratio isolates quantization. Median of 20 runs after 3 warm-up
runs, CPUExecutionProvider, default session options.
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


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    names = sys.argv[1:] or ["resnet18", "mobilenet_v2"]
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | batch | fp32 ms | int8 QDQ ms | speed-up |")
    print("|---|---|---|---|---|")
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
            for batch in (1, 8):
                x = torch.randn(batch, 3, 224, 224)
                f, q = latency(fp32_path, x), latency(int8_path, x)
                print(f"| {name} | {batch} | {f:.1f} | {q:.1f} | {f / q:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

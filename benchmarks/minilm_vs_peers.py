"""all-MiniLM-L6-v2 (real weights) quantized W8A8 by us and by peers, on the same sentences.

Prints cosine mean / min to the float embeddings and nearest-neighbour agreement (tests/minilm.py) for:
- ours with the DPU defaults (power-of-two scales, per-tensor, bias correction);
- ours with a CPU float-scale config (per-channel weights, percentile activations: benchmarks/configs);
- ours with 16-bit activations (the upper bound of 8-bit weights);
- torchao PT2E with XNNPACKQuantizer (per-tensor symmetric, and per-channel weights);
- onnxruntime's quantize_static (QDQ, per-channel weights, MinMax and Percentile calibration) on the float
  ONNX model our exporter writes.

    python benchmarks/minilm_vs_peers.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import minilm  # noqa: E402

CPU_CONFIG = HERE / "configs" / "cpu_float_scale_per_channel.json"
A16_CONFIG = HERE / "configs" / "dpu_a16.json"
EVAL_BATCH = minilm.EVAL_BATCH
ours, pt2e, in_batches = minilm.quantize, minilm.pt2e, minilm.in_batches


def onnxruntime_static(m: minilm.MiniLM, method: str) -> torch.Tensor:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize_static

    import pytorch_nndct as nd
    from pytorch_nndct.export.onnx_qdq import build_onnx
    from pytorch_nndct.quant.plan import QuantPlan
    from pytorch_nndct.quant.table import QuantTable

    graph = nd.optimize(nd.trace(m.model, (m.ids[:EVAL_BATCH], m.mask[:EVAL_BATCH])))
    model = build_onnx(graph, QuantPlan(), QuantTable(graph.name), quantized=False)
    names = [i.name for i in model.graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {names[0]: ids.numpy(), names[1]: mask.numpy()} for ids, mask in m.calibration_batches()
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = f"{tmp}/float.onnx", f"{tmp}/int8.onnx"
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))  # fmt: skip
        session = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(session.run(None, {names[0]: ids.numpy(), names[1]: mask.numpy()})[0]))

    return in_batches(run, m)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    m = minilm.load()
    runs = {
        "ours, DPU defaults (power-of-two, per-tensor)": lambda: ours(m),
        "ours, CPU float scales, per-channel weights": lambda: ours(m, CPU_CONFIG),
        "ours, DPU, 16-bit activations (bound)": lambda: ours(m, A16_CONFIG),
        "PT2E XNNPACK per-tensor symmetric": lambda: pt2e(m, per_channel=False),
        "PT2E XNNPACK per-channel weights": lambda: pt2e(m, per_channel=True),
        "onnxruntime quantize_static MinMax": lambda: onnxruntime_static(m, "MinMax"),
        "onnxruntime quantize_static Percentile": lambda: onnxruntime_static(m, "Percentile"),
    }
    scored = len(m.ids) - minilm.CALIB
    print(f"all-MiniLM-L6-v2, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{minilm.CALIB} calibration sentences, {scored} scored, {minilm.TOKENS} tokens")  # fmt: skip
    print("| quantizer | cosine mean | cosine min | nearest-neighbour agreement | seconds |")
    print("|---|---|---|---|---|")
    for name, fn in runs.items():
        t = time.perf_counter()
        try:
            mean, low, agree = m.score(fn())
            print(f"| {name} | {mean:.4f} | {low:.4f} | {agree:.1%} | {time.perf_counter() - t:.0f} |", flush=True)
        except Exception as exc:  # a peer that fails is reported, not fatal
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:120]} | | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

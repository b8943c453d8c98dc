"""The resnet18 example with vai_q_pytorch 3.5's flags and call sequence runs in fresh processes: inspect,
calibrate with fast finetune, test with it, deploy at batch 1 with the three exports; every file loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from PIL import Image

from pytorch_nndct.export.xir_schema import schema

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "resnet18_quant.py")
TARGET = "DPUCZDX8G_ISA1_B4096"


def _image_folder(root: Path, classes: int = 2, per_class: int = 1) -> None:
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = root / "val" / f"class_{c}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            pixels = (torch.rand(64, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"img_{k}.png")


def _run(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, SCRIPT, *flags], capture_output=True, text=True, timeout=1800, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_resnet18_example_v35_sequence(tmp_path):
    _image_folder(tmp_path / "data")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    common = ["--data_dir", str(tmp_path / "data"), "--model_dir", str(tmp_path)]
    out = tmp_path / "quantize_result"  # the original's fixed folder, in the working directory

    _run(tmp_path, *common, "--quant_mode", "float", "--inspect", "--target", TARGET)
    report = (out / f"inspect_{TARGET}.txt").read_text()
    assert "target info:" in report and TARGET in report

    calib = _run(tmp_path, *common, "--quant_mode", "calib", "--fast_finetune", "--subset_len", "2",
                 "--batch_size", "2", "--unknown_flag_for_the_caller")  # fmt: skip
    assert "fast finetune: 21 layer(s) on 2 sample(s)" in calib.stderr
    doc = json.loads((out / "quant_info.json").read_text())
    assert (out / "ResNet.py").exists() and (out / "param.pth").exists() is doc["fast_finetuned"]

    test = _run(tmp_path, *common, "--quant_mode", "test", "--fast_finetune", "--subset_len", "2", "--batch_size", "2")
    loss, top1, top5 = (float(v) for v in re.search(r"loss: ([\d.]+)\s+top-1 / top-5 accuracy: ([\d.]+) / ([\d.]+)",
                                                    test.stdout).groups())  # fmt: skip
    assert loss > 0 and 0 <= top1 <= top5 <= 100

    _run(tmp_path, *common, "--quant_mode", "test", "--fast_finetune", "--deploy")  # batch 1, one image
    g = schema().Graph.FromString((out / "ResNet_int.xmodel").read_bytes())
    assert g.graph_name == "ResNet" and sum(op.op_type == "conv2d" for op in g.op_node) == 20
    assert [d for op in g.op_node if op.op_type == "data" for d in op.output_tensor.tensor_dim] == [1, 224, 224, 3]
    x = torch.randn(1, 3, 224, 224)
    sess = ort.InferenceSession(str(out / "ResNet_int.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    scripted = torch.jit.load(str(out / "ResNet_int.pt"))
    with torch.no_grad():
        ts_out = scripted(x)
    assert ts_out.shape == (1, 1000) and np.isfinite(onnx_out).all()
    # the two deployed forms agree (onnxruntime rounds ties to even where the DPU simulation rounds half up)
    assert float(np.corrcoef(onnx_out.reshape(-1), ts_out.numpy().reshape(-1))[0, 1]) > 0.99

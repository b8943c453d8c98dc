"""The seed's resnet18 example runs end to end: calibrate, then test, in two processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _image_folder(root: Path, classes: int = 3, per_class: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = root / "val" / f"class_{c}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            pixels = (torch.rand(64, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"img_{k}.png")


@pytest.mark.parametrize("finetune", [False, True])
def test_resnet18_example_calib_then_test(tmp_path, finetune):
    _image_folder(tmp_path / "data")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    common = ["--data_dir", str(tmp_path / "data"), "--model_dir", str(tmp_path), "--batch_size", "4",
              "--output_dir", str(tmp_path / "out")]  # fmt: skip
    script = str(ROOT / "examples" / "resnet18_quant.py")
    results, calib_log = {}, ""
    if finetune:
        common += ["--subset_len", "4"]
    for mode in ("calib", "2"):
        extra = ["--fast_finetune"] if finetune and mode == "calib" else []
        run = subprocess.run([sys.executable, script, "--quant_mode", mode, *common, *extra], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        calib_log = run.stderr if mode == "calib" else calib_log
        match = re.search(r"loss: ([\d.]+)\s+top-1 / top-5 accuracy: ([\d.]+) / ([\d.]+)", run.stdout)
        assert match, run.stdout
        results[mode] = tuple(float(v) for v in match.groups())
    assert (tmp_path / "out" / "quant_info.json").exists() and (tmp_path / "out" / "ResNet.py").exists()
    for loss, top1, top5 in results.values():
        assert loss > 0 and 0 <= top1 <= top5 <= 100
    doc = json.loads((tmp_path / "out" / "quant_info.json").read_text())
    assert (tmp_path / "out" / "param.pth").exists() is finetune
    if finetune:  # the run says what it will cache and what it kept; the flag follows what was kept
        assert "fast finetune: 21 layer(s) on 4 sample(s)" in calib_log and "fast finetune kept" in calib_log
        kept = torch.load(tmp_path / "out" / "param.pth", weights_only=True)
        assert doc["fast_finetuned"] is bool(kept)

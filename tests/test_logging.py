"""Log lines name pytorch_nndct once, whether or not the application has configured logging."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys, torch
if sys.argv[1] == "configured":
    logging.basicConfig()
import pytorch_nndct as nd

class Odd(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)  # no quantized equivalent: one warning after the graph passes

nd.optimize(nd.trace(Odd(), torch.randn(2, 4)))
"""


def _stderr(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return "\n".join(line for line in done.stderr.splitlines() if "no quantized equivalent" in line)


def test_unconfigured_logging_prints_the_name_once():
    line = _stderr("bare")
    assert line.startswith("pytorch_nndct: 1 op(s) of Odd have no quantized equivalent"), line
    assert line.count("pytorch_nndct") == 1


def test_configured_logging_uses_the_application_format_without_a_second_prefix():
    line = _stderr("configured")
    assert line.startswith("WARNING:pytorch_nndct:1 op(s) of Odd"), line
    assert line.count("pytorch_nndct") == 1


def test_few_calibration_samples_and_the_first_compile_are_announced(tmp_path, caplog, monkeypatch):
    import torch

    from pytorch_nndct.apis import torch_quantizer
    from pytorch_nndct.quant import kernels

    monkeypatch.setitem(kernels._ANNOUNCED, "value", False)  # as in a fresh process: nothing compiled yet
    for table in (kernels._FQ, kernels._ERRORS, kernels._ERRORS_FQ):
        for compiled in table.values():
            monkeypatch.setattr(compiled, "compiled", None)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()  # outputs big enough to compile
    with caplog.at_level("WARNING", logger="pytorch_nndct"), torch.no_grad():
        quantizer = torch_quantizer("calib", model, (torch.randn(1, 3, 32, 32),), output_dir=tmp_path)
        for _ in range(3):
            quantizer.quant_model(torch.randn(4, 3, 32, 32))
        quantizer.export_quant_config()
    text = caplog.text
    assert "calibrated on 12 sample(s) in 3 batch(es); 100 to 1000 representative samples are advised" in text
    assert kernels.kernels_enabled() and text.count("compiling the fused quantization kernels") == 1

"""The `vai_q_pytorch` command line: the built-in default end to end, every subcommand, errors, interrupts,
and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytorch_nndct import cli

COMMANDS = ["quantize", "test", "export", "inspect", "report"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytorch_nndct", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("cli")
    return cwd, _cli("quantize", cwd=cwd)


def test_quantize_with_no_arguments_quantizes_the_builtin_demo(quantized):
    cwd, run = quantized
    assert run.returncode == 0, run.stderr
    out = cwd / "quantize_result"
    assert {"DigitsNet.py", "DigitsNet.pth", "quant_info.json", "bias_corr.pth", "run.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    lines = run.stdout.splitlines()
    float_acc = float(next(line for line in lines if line.startswith("| float |")).split("|")[2])
    quant_acc = float(next(line for line in lines if line.startswith("| quantized |")).split("|")[2])
    assert float_acc > 97.0 and float_acc - quant_acc <= 1.0
    assert "vai_q_pytorch export" in run.stdout and "calibrating" in run.stderr  # next steps; a progress bar


def test_later_subcommands_reuse_the_output_dir(quantized):
    cwd, _ = quantized
    run = _cli("test", "--quiet", cwd=cwd)
    assert run.returncode == 0 and "| quantized |" in run.stdout and run.stderr == ""
    run = _cli("export", "--deploy-check", cwd=cwd)
    assert run.returncode == 0, run.stderr
    out = cwd / "quantize_result"
    assert (out / "DigitsNet_int.xmodel").stat().st_size > 0 and (out / "DigitsNet_int.onnx").stat().st_size > 0
    assert any((out / "deploy_check_data_int").rglob("*.bin"))
    run = _cli("inspect", cwd=cwd)
    assert (
        run.returncode == 0
        and "13 of 13 ops on the DPU" in run.stdout
        and "| stem.0.weight | param | 8 |" in run.stdout
    )


def test_report_renders_in_headless_chromium(quantized, tmp_path):
    cwd, _ = quantized
    run = _cli("report", cwd=cwd)
    assert run.returncode == 0, run.stderr
    html = cwd / "quantize_result" / "report.html"
    text = (cwd / "quantize_result" / "report.txt").read_text()
    assert "| relu_2 | relu | stem.2 | 8 |" in text and "13 of 13 ops on the DPU" in text
    sensitivity = [line for line in text.split("Weight sensitivity")[1].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in sensitivity][:2] == ["| stem.0.weight", "| dw.0.weight"]
    assert len(sensitivity) == 5 and all(float(line.split(" | ")[4].rstrip(" |")) > 20 for line in sensitivity)
    browser = shutil.which("chromium")
    assert browser, "the test command installs Debian's chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    # the DOM after the page loaded, with the size each image decoded to written into the document
    script = tmp_path / "probe.html"
    script.write_text(
        html.read_text().replace(
            "</body>",
            "<script>for (const img of document.images) img.setAttribute('data-w', img.naturalWidth);</script></body>",
        )
    )
    dom = subprocess.run([browser, *flags, "--dump-dom", script.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<table class="layers">' in dom.stdout and "<td>relu_2</td>" in dom.stdout
    assert '<table class="sensitivity">' in dom.stdout and "<td>fc.weight</td>" in dom.stdout
    widths = [int(w) for w in re.findall(r'data-w="(\d+)"', dom.stdout)]
    assert len(widths) == 2 and min(widths) > 200, widths  # both plots decoded
    png = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={png}", html.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert png.stat().st_size > 20_000


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, tmp_path):
    run = _cli(command, "--help", cwd=tmp_path)
    assert run.returncode == 0 and "--output-dir" in run.stdout


def _bad_tensor(tmp_path: Path) -> str:
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "rgb.pt")
    return "rgb.pt"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", "--model", "torchvision:resnet19", "--data", "x"], "no classification model 'resnet19'"),
        (["quantize", "--model", "foo"], "unknown model 'foo'"),
        (["quantize", "--model", "missing.py:make"], "model file 'missing.py' does not exist"),
        (["quantize", "--data", "nothere.pt"], "data 'nothere.pt' does not exist"),
        (["quantize", "--data", "empty"], "empty has no images"),
        (["quantize", "--data", "rgb.pt"], "of shape [3, 8, 8] does not fit the model"),
        (["quantize", "--weights", "nope.pth"], "weights file 'nope.pth' does not exist"),
        (["test", "--output-dir", "nowhere"], "nowhere holds no quantized model"),
        (["quantize", "--config", "none.json"], "none.json' does not exist"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _bad_tensor(tmp_path)
    run = _cli(*args, "--quiet", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vai_q_pytorch: error: ") and message in lines[0], lines


def test_interrupt_leaves_the_output_dir_as_it_was(quantized, tmp_path, monkeypatch):
    out = tmp_path / "result"
    shutil.copytree(quantized[0] / "quantize_result", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = cli._progress

    def interrupted(iterable, desc, total, quiet):
        for k, item in enumerate(real(iterable, desc, total, quiet)):
            if k == 2 and desc == "calibrating":
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(cli, "_progress", interrupted)
    assert cli.main(["quantize", "--bitwidth", "4", "--output-dir", str(out), "--quiet"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing changed
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    # run to the end, the same command replaces the files
    monkeypatch.setattr(cli, "_progress", real)
    assert cli.main(["quantize", "--bitwidth", "4", "--output-dir", str(out), "--quiet"]) == 0
    doc = json.loads((out / "quant_info.json").read_text())
    assert {v[0][0] for v in doc["param"].values()} == {4}


def test_model_from_a_file_with_tensor_data(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),"
        " torch.nn.Linear(4 * 6 * 6, 3))\n"
    )
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 3, 8, 8, generator=g), "y": torch.randint(0, 3, (40,), generator=g)},
               tmp_path / "data.pt")  # fmt: skip
    run = _cli("quantize", "--model", "net.py:make", "--data", "data.pt", "--batch-size", "8", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "| quantized |" in run.stdout and "output SQNR quantized vs float" in run.stdout
    settings = json.loads((tmp_path / "quantize_result" / "run.json").read_text())
    assert settings["model"] == f"{tmp_path / 'net.py'}:make" and settings["data"] == str(tmp_path / "data.pt")
    assert _cli("inspect", "--output-dir", str(tmp_path / "quantize_result"), cwd=tmp_path.parent).returncode == 0

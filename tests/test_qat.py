"""QatProcessor (the original's QAT API) on the digits model: train from a post-training calibration at 4 bits,
to_deployable, then deployable_model and export_xmodel in a fresh process.

Checks: the fix positions of test/quant_info.json are b - 1 - ceil(log2 t) of the trained thresholds; the
fresh process's deployable model gives the outputs of the one to_deployable returned, bit for bit, and where
the DPU constraints moved no fix position, those of the trained model itself; the deploy graph's integer-only
run equals the simulation; one epoch of training raised the 4-bit accuracy over its post-training start; clear errors.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytorch_nndct import QatProcessor
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import InputError, NndctError
from pytorch_nndct.export.deploy import lower
from pytorch_nndct.export.integer import run_integer
from pytorch_nndct.models.digits import load_digits, pretrained

TESTS = Path(__file__).resolve().parent
BITS = 4


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _calibrate(folder: Path, xtr: torch.Tensor) -> None:
    q = torch_quantizer("calib", pretrained(), (xtr[:1],), output_dir=folder, bitwidth_w=BITS, bitwidth_a=BITS)
    with torch.no_grad():
        q.quant_model(xtr[:256])
    q.export_quant_config()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Post-training 4-bit accuracy, then one epoch of QAT from that calibration: (qat, model, folder, data)."""
    work = tmp_path_factory.mktemp("qat")
    home = os.getcwd()
    os.chdir(work)  # QatProcessor writes .vai_qat in the current directory, as the original does
    xtr, ytr, xte, yte = load_digits()
    ptq = work / "ptq"
    _calibrate(ptq, xtr)
    qat = QatProcessor(pretrained(), (xtr[:1],), bitwidth=BITS)
    model = qat.trainable_model(calib_dir=str(ptq))
    start_acc = _accuracy(model, xte, yte)  # the post-training fix positions (without bias correction)
    opt = torch.optim.Adam(
        [{"params": model.non_quantizer_parameters(), "lr": 1e-3}, {"params": model.quantizer_parameters(), "lr": 1e-2}]
    )
    torch.manual_seed(0)
    for idx in torch.randperm(len(xtr)).split(64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
    model.eval()
    print(f"4-bit digits: QAT start {start_acc:.4f}, after one epoch {_accuracy(model, xte, yte):.4f}")
    yield qat, model, work / "result", (xtr, ytr, xte, yte), start_acc
    os.chdir(home)


def test_deployable_equals_trained_and_fresh_process(trained):
    qat, model, result, (_, _, xte, yte), start_acc = trained
    with torch.no_grad():
        trained_out = model(xte)
    thresholds = {k: q.log_threshold.item() for k, q in qat._quantizers.items()}
    deployable = qat.to_deployable(model, result)
    assert {p.name for p in result.iterdir()} >= {"quant_info.json", "test", "deployable.pth"}
    raw = json.loads((result / "test" / "quant_info.json").read_text())
    entries = {k.split("::")[1]: v[0][1] for sec in ("param", "output") for k, v in raw[sec].items()}
    assert entries == {k: BITS - 1 - math.ceil(t) for k, t in thresholds.items()}
    constrained = json.loads((result / "quant_info.json").read_text())
    moved = {k for sec in ("param", "output") for k, v in constrained[sec].items() if raw[sec][k] != v}
    with torch.no_grad():
        deployed = deployable(xte)
    if not moved:
        assert torch.equal(deployed, trained_out)
    assert float((deployed.argmax(1) == yte).float().mean()) > start_acc  # training helped the 4-bit model

    fresh = result / "fresh.pt"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    subprocess.run([sys.executable, str(TESTS / "qat_process.py"), str(result.parent), str(result), str(fresh)],
                   check=True, env=env, timeout=600)  # fmt: skip
    assert torch.equal(torch.load(fresh), deployed)
    assert (result / "DigitsNet_int.xmodel").is_file()

    quantizer = qat._deployable
    x = xte[:2]
    with torch.no_grad():
        simulated = quantizer.quant_model(x)
    deploy = lower(quantizer.export_graph(), quantizer.plan, quantizer.table, batch=2)
    out = run_integer(deploy, [x])[deploy.ops[-1].name].to_float()
    assert torch.equal(out, simulated)


def test_clear_errors(trained, tmp_path):
    _, model, _, (xtr, *_), _ = trained
    with pytest.raises(InputError, match="plain model"):
        QatProcessor(torch.nn.DataParallel(pretrained()), (xtr[:1],))
    fresh = QatProcessor(pretrained(), (xtr[:1],), bitwidth=BITS)
    with pytest.raises(NndctError, match="deployable_model"):
        fresh.export_xmodel(tmp_path)
    with pytest.raises(InputError, match="trainable_model"):
        fresh.to_deployable(model, tmp_path)
    other = tmp_path / "other"
    another = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )
    another(xtr[:1])
    q = torch_quantizer("calib", another.eval(), (xtr[:1],), output_dir=other)
    with torch.no_grad():
        q.quant_model(xtr[:32])
    q.export_quant_config()
    with pytest.raises(InputError, match="another model"):
        fresh.trainable_model(calib_dir=str(other))
    trainable = fresh.trainable_model()
    trainable.fuse_conv_bn()
    with pytest.raises(InputError, match="fuse_conv_bn"):
        fresh.to_deployable(trainable, tmp_path / "out")

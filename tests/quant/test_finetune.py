"""Fast finetune (AdaQuant): improves a 4-bit model, saved in param.pth, reloaded in test mode, exported."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import NndctError
from pytorch_nndct.export.deploy import lower
from pytorch_nndct.export.quant_info import PARAM_FILE, QuantInfoError
from pytorch_nndct.export.reference import run_deploy_graph
from pytorch_nndct.models.digits import load_digits, pretrained
from pytorch_nndct.quant.runtime import Mode


def evaluate(model, x, y):
    """The seed's evaluate: (top1, top5, loss); fast_finetune takes the last item as the loss."""
    with torch.no_grad():
        out = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)])
    top1 = 100.0 * float((out.argmax(1) == y).float().mean())
    return top1, top1, F.cross_entropy(out, y).item()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    model, (xtr, ytr, xte, yte) = pretrained(), load_digits()
    results = {}
    for ft in (False, True):
        out = tmp_path_factory.mktemp(f"ft_{ft}")
        q = torch_quantizer("calib", model, (xtr[:2],), output_dir=out, bitwidth_w=4)
        if ft:
            q.fast_finetune(evaluate, (q.quant_model, xtr[:256], ytr[:256]))
        evaluate(q.quant_model, xtr[:512], ytr[:512])  # calibration
        q.export_quant_config()
        test = torch_quantizer("test", model, (xtr[:2],), output_dir=out, bitwidth_w=4)
        results[ft] = (out, test, evaluate(test.quant_model, xte, yte))
    return model, (xtr, ytr, xte, yte), results


def test_fast_finetune_recovers_the_4_bit_loss(digits):
    model, (_, _, xte, yte), results = digits
    float_top1, _, _float_loss = evaluate(model, xte, yte)
    (_, _, (top1, _, loss)), (_, _, (ft_top1, _, ft_loss)) = results[False], results[True]
    assert ft_loss < loss  # held-out loss, not the finetuning data's
    assert ft_top1 >= top1 and float_top1 - ft_top1 <= 0.5 * max(float_top1 - top1, 0.2)  # measured: all recovered


def test_params_saved_flagged_and_reloaded(digits):
    _, (_xtr, _, xte, _), results = digits
    out, test, _ = results[True]
    doc = json.loads((out / "quant_info.json").read_text())
    assert doc["fast_finetuned"] is True and json.loads((results[False][0] / "quant_info.json").read_text())[
        "fast_finetuned"] is False  # fmt: skip
    saved = torch.load(out / PARAM_FILE, weights_only=True)
    assert saved and all(k in test.graph.params for k in saved)
    changed = [k for k, v in saved.items() if not torch.equal(v, test.graph.params[k])]
    assert changed  # the float graph keeps its own values; the finetuned ones are overrides
    with torch.no_grad():
        auto = test.quant_model(xte[:32])
        test.load_ft_param()  # the seed's explicit call gives the same model
        assert torch.equal(test.quant_model(xte[:32]), auto)
        test.state.mode = Mode.FLOAT  # the float model is untouched
        torch.testing.assert_close(test.quant_model(xte[:32]), pretrained()(xte[:32]), rtol=1e-4, atol=1e-4)
        test.state.mode = Mode.TEST
    graph = test.export_graph()
    assert all(torch.equal(graph.params[k], saved[k]) for k in saved if not k.endswith("bias"))
    deploy = lower(graph, test.plan, test.table)
    x = xte[:1]
    with torch.no_grad():
        simulated = test.quant_model(x)
    assert torch.equal(run_deploy_graph(deploy, [x])[deploy.ops[-1].name], simulated)


def test_fast_finetune_errors(digits, tmp_path):
    model, (xtr, ytr, _, _), results = digits
    with pytest.raises(NndctError, match=r"runs in calib mode.*load_ft_param"):
        results[True][1].fast_finetune(evaluate, (results[True][1].quant_model, xtr[:8], ytr[:8]))
    q = torch_quantizer("calib", model, (xtr[:2],), output_dir=tmp_path)
    with pytest.raises(TypeError, match="must return the loss"):
        q.fast_finetune(lambda m: m(xtr[:8]), (q.quant_model,))
    test = results[False][1]
    with pytest.raises(QuantInfoError, match=r"param\.pth does not exist"):
        test.load_ft_param()

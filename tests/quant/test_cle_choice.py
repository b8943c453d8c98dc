"""Cross-layer equalization decided pair by pair on the first calibration batch (quant/cle_choice.py).

With bias correction on, a pair is kept only where it lowers its segment's error; the choice is written to
quant_info.json ("equalized_pairs") and test mode equalizes exactly those pairs. Without bias correction every
pair is equalized, as are files written before the key existed.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from helpers import sqnr_db
from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.models.digits import load_digits, pretrained


class Unbalanced(nn.Module):
    """conv -> relu -> conv with output channels of the first spread over four decades: per-tensor weights lose
    the small channels unless equalized."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            spread = torch.tensor([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]).reshape(8, 1, 1, 1)
            self.a.weight.mul_(spread)
            self.a.bias.mul_(spread.flatten())
            self.b.weight.div_(spread.reshape(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _quantize(model, calib, evals, tmp_path, config: dict, strip_key: bool = False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    q = torch_quantizer("calib", model, (calib[:1],), output_dir=str(out), quant_config_file=str(path))
    with torch.no_grad():
        q.quant_model(calib)
    q.export_quant_config()
    doc = json.loads((out / "quant_info.json").read_text())
    if strip_key:
        (out / "quant_info.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "equalized_pairs"}))
    q = torch_quantizer("test", model, (calib[:1],), output_dir=str(out), quant_config_file=str(path))
    with torch.no_grad():
        return q.quant_model(evals), doc.get("equalized_pairs"), q.graph


def test_digits_pair_that_loses_is_left_out(tmp_path):
    # the digits CNN's depthwise -> pointwise pair: with bias correction, equalizing it raises the
    # activation error more than it lowers the weight error; left out, the result is the unequalized one
    xtr, _, xte, _ = load_digits()
    model = pretrained()
    on, pairs, _ = _quantize(model, xtr[:16], xte[:64], tmp_path / "on", {})
    off, none, _ = _quantize(model, xtr[:16], xte[:64], tmp_path / "off", {"include_cle": False})
    assert pairs == [] and none == []
    assert torch.equal(on, off)


def test_pair_that_pays_is_kept_and_reproduced_in_test_mode(tmp_path):
    torch.manual_seed(0)
    model = Unbalanced().eval()
    calib, evals = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        ref = model(evals)
    on, pairs, graph = _quantize(model, calib, evals, tmp_path / "on", {})
    off, _, _ = _quantize(model, calib, evals, tmp_path / "off", {"include_cle": False})
    assert pairs == [["conv2d_1", "conv2d_3"]]
    assert sqnr_db(ref, on) > sqnr_db(ref, off) + 3
    w = graph.params["a.weight"].abs().reshape(8, -1).amax(1)
    assert w.max() / w.min() < 10  # test mode equalized the pair again (four decades before)


def test_without_bias_correction_and_for_older_files_every_pair(tmp_path):
    torch.manual_seed(0)
    model = Unbalanced().eval()
    calib = torch.randn(16, 3, 8, 8)
    _, pairs, _ = _quantize(model, calib, calib, tmp_path / "nobc", {"include_bias_corr": False})
    assert pairs == [["conv2d_1", "conv2d_3"]]
    xtr, _, xte, _ = load_digits()
    model = pretrained()
    kept, _, _ = _quantize(model, xtr[:16], xte[:64], tmp_path / "new", {})
    old, pairs, graph = _quantize(model, xtr[:16], xte[:64], tmp_path / "old", {}, strip_key=True)
    assert pairs == []  # calibration left the pair out, but the file no longer says so: test mode equalizes it
    w = graph.params["dw.0.weight"].abs().reshape(32, -1).amax(1)
    torch.testing.assert_close(w, graph.params["pw.0.weight"].abs().amax(0).flatten(), rtol=1e-3, atol=0)
    assert not torch.equal(kept, old)

"""The original's QAT helper modules (`pytorch_nndct.nn.modules.functional`, QuantStub / DeQuantStub): each
computes what its torch op computes, and a model built from them traces into ordinary graph ops,
regenerates, and quantizes like any other."""

from __future__ import annotations

import collections
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytorch_nndct as nd
import pytorch_nndct.nn as nndct_nn
from helpers import assert_float_equivalent, calib_then_test, sqnr_db
from pytorch_nndct.nn import DeQuantStub, QuantStub
from pytorch_nndct.nn.modules import functional


# ------------------------------------------------------------------ each class against its torch op
def _t(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_elementwise_ops_match_torch():
    a, b = _t(2, 3, 4), _t(2, 3, 4, seed=1)
    assert torch.equal(functional.Add()(a, b), a + b)
    assert torch.equal(functional.Add()(a, b, alpha=3), torch.add(a, b, alpha=3))
    assert torch.equal(functional.Add()(a, 2.5), a + 2.5)
    assert torch.equal(functional.Sub()(a, b), a - b)
    assert torch.equal(functional.Sub()(a, b, alpha=0.5), torch.sub(a, b, alpha=0.5))
    assert torch.equal(functional.Sub()(a, 1), a - 1)
    assert torch.equal(functional.AddScalar()(a, 2), a + 2.0)
    assert torch.equal(functional.Mul()(a, b), a * b)
    assert torch.equal(functional.Mul()(a, -2), a * -2)
    assert torch.equal(functional.Sqrt()(a.abs()), a.abs().sqrt())
    assert torch.equal(functional.Clamp()(a, -0.5, 0.25), a.clamp(-0.5, 0.25))
    assert torch.equal(functional.Clamp()(a, min=0.0), a.clamp(min=0.0))
    assert torch.equal(functional.Clamp()(a, max=0.1), a.clamp(max=0.1))


def test_shape_and_reduction_ops_match_torch():
    a, b = _t(2, 3, 4), _t(2, 3, 4, seed=1)
    assert torch.equal(functional.Cat()([a, b]), torch.cat([a, b]))
    assert torch.equal(functional.Cat()((a, b), dim=2), torch.cat([a, b], 2))
    assert torch.equal(functional.Cat()([a, b], -1), torch.cat([a, b], -1))
    assert torch.equal(functional.Matmul()(a, b.transpose(1, 2)), a @ b.transpose(1, 2))
    values, indices = functional.Max()(a, 1)
    ref = torch.max(a, 1)
    assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)
    assert functional.Max()(a, 2, keepdim=True)[0].shape == (2, 3, 1)
    assert torch.equal(functional.Sum()(a, 1), a.sum(1))
    assert torch.equal(functional.Sum()(a, (0, 2), keepdim=True), a.sum((0, 2), keepdim=True))
    assert functional.Sum()(a, 1, dtype=torch.float64).dtype == torch.float64
    assert torch.equal(functional.Mean()(a, 1), a.mean(1))
    assert torch.equal(functional.Mean()(a, [1, 2], True), a.mean([1, 2], keepdim=True))
    assert torch.equal(functional.Softmax()(a, 2), torch.softmax(a, 2))
    assert functional.Softmax()(a, -1, dtype=torch.float64).dtype == torch.float64
    assert torch.equal(functional.Transpose()(a, 0, 2), a.transpose(0, 2))


def test_resize_and_pad_match_torch(monkeypatch, caplog):
    x = _t(1, 2, 5, 6)
    assert torch.equal(functional.Interpolate()(x, scale_factor=2), F.interpolate(x, scale_factor=2))
    assert torch.equal(
        functional.Interpolate()(x, size=(7, 9), mode="bilinear", align_corners=True),
        F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True),
    )
    assert torch.equal(functional.Upsample()(x, scale_factor=2), F.interpolate(x, scale_factor=2))
    assert torch.equal(
        functional.Upsample()(x, size=(10, 3), mode="bilinear", align_corners=False),
        F.interpolate(x, size=(10, 3), mode="bilinear", align_corners=False),
    )
    monkeypatch.setattr(functional, "_warned_pad_modes", set())
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        assert torch.equal(functional.Pad()(x, (1, 2, 0, 1), mode="replicate"), F.pad(x, (1, 2, 0, 1), "replicate"))
        assert not caplog.records  # replicate: no warning
        assert torch.equal(functional.Pad()(x, (1, 1)), F.pad(x, (1, 1)))
        assert torch.equal(functional.Pad()(x, [2, 0], value=-1.5), F.pad(x, (2, 0), value=-1.5))
        assert torch.equal(functional.Pad()(x, (1, 1, 1, 1), "reflect"), F.pad(x, (1, 1, 1, 1), "reflect"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per mode: constant, reflect
    assert "'constant'" in messages[0] and "'reflect'" in messages[1] and "replicate" in messages[0]


def test_const_is_a_buffer():
    c = functional.Const(torch.tensor([1.0, 2.0]))
    assert torch.equal(c(), torch.tensor([1.0, 2.0]))
    assert set(c.state_dict()) == {"value"} and not list(c.parameters())
    assert c.to(torch.float64)().dtype == torch.float64
    assert torch.equal(functional.Const(3.0)(), torch.tensor(3.0))


def test_out_tensor_is_refused():
    a = _t(3)
    assert torch.equal(functional.Add()(a, a, out=None), a + a)
    for module, args in (
        (functional.Add(), (a, a)),
        (functional.Sub(), (a, a)),
        (functional.Matmul(), (a, a)),
        (functional.Max(), (a, 0)),
        (functional.Mean(), (a, 0)),
        (functional.Sqrt(), (a,)),
    ):
        with pytest.raises(ValueError, match="out= is not supported"):
            module(*args, out=torch.empty(3))


def test_every_class_is_a_functional_module():
    for name in functional.__all__:
        cls = getattr(functional, name)
        assert issubclass(cls, functional.Functional) and issubclass(cls, nn.Module), name


def test_stubs_are_the_identity_and_keep_containers():
    a, b = _t(2), _t(3, seed=1)
    pair = collections.namedtuple("Pair", "first second")
    for stub in (QuantStub(), DeQuantStub()):
        assert stub(a) is a
        out = stub([a, (b, a)])
        assert type(out) is list and out[0] is a and type(out[1]) is tuple and out[1][1] is a
        named = stub(pair(a, [b]))
        assert type(named) is pair and named.first is a and named.second[0] is b
        assert stub(None) is None
    assert nndct_nn.QuantStub is QuantStub and "QuantStub" in nndct_nn.__all__ and "DeQuantStub" in nndct_nn.__all__
    from pytorch_nndct.nn.modules import DeQuantStub as Dq

    assert Dq is DeQuantStub


def test_package_keeps_the_generated_code_runtime():
    """nn.modules became a package: the generated-code classes and nn.functional's tables are where they were."""
    import pytorch_nndct.nn.functional as runtime_functional

    assert nndct_nn.functional is runtime_functional and "relu" in nndct_nn.FUNCTIONS
    assert nndct_nn.Conv2d.__module__ == "pytorch_nndct.nn.modules"
    assert nndct_nn.modules.functional is functional
    assert not hasattr(functional, "FUNCTIONS")


# ------------------------------------------------------------------ a model built from them
class FunctionalNet(nn.Module):
    """A QAT-style model: every op that would be quantized is a module."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.add = functional.Add()
        self.sub = functional.Sub()
        self.mul = functional.Mul()
        self.cat = functional.Cat()
        self.pad = functional.Pad()
        self.clamp = functional.Clamp()
        self.conv_c = nn.Conv2d(16, 8, 3)
        self.max = functional.Max()
        self.mean = functional.Mean()
        self.fc = nn.Linear(8, 4)
        self.add_out = functional.Add()
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        a = self.relu(self.conv_a(x))
        b = self.conv_b(x)
        s = self.add(a, b)
        d = self.sub(a, b, alpha=0.5)
        m = self.mul(s, d)
        c = self.cat([s, m], dim=1)
        p = self.clamp(self.pad(c, (1, 1, 1, 1), mode="replicate"), -3.0, 3.0)
        y = self.conv_c(p)
        peak = self.max(y, 1, keepdim=True)[0]  # (N, 1, H, W)
        pooled = self.mean(y, (2, 3))  # (N, 8)
        out = self.add_out(self.fc(pooled), self.mean(peak, (1, 2, 3)).unsqueeze(1))
        return self.dequant(out)


def _model_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return FunctionalNet().eval(), torch.randn(2, 3, 12, 12)


def test_model_traces_to_plain_ops_and_regenerates(tmp_path):
    model, x = _model_and_input()
    graph = nd.optimize(nd.trace(model, (x,)))
    ops = collections.defaultdict(list)
    for node in graph.nodes:
        ops[node.scope].append(node.op.value)
    # each module becomes the ordinary op, under its own scope; the stubs leave nothing behind
    for scope, op in {"add": "add", "sub": "sub", "mul": "mul", "cat": "cat", "pad": "pad", "add_out": "add"}.items():
        assert ops[scope] == [op], (scope, dict(ops))
    assert ops["mean"] == ["mean", "mean"]
    assert [n.attrs["alpha"] for n in graph.nodes if n.scope == "sub"] == [0.5]
    # clamp and max(dim) have no op of their own in our IR: captured as float ATen ops (max: values taken)
    assert ops["clamp"] == ["aten"] and ops["max"] == ["aten", "getitem"]
    assert not any("quant" in node.scope for node in graph.nodes)
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        for batch in (1, 2, 5):
            inp = torch.randn(batch, 3, 12, 12)
            assert_float_equivalent(model(inp), loaded(inp), rtol=1e-4, atol=1e-5)


def test_model_quantizes_through_the_api(tmp_path):
    model, x = _model_and_input()
    batches = [torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    _, test = calib_then_test(model, x, batches, tmp_path)
    assert (tmp_path / "quant_info.json").exists()
    with torch.no_grad():
        ref = model(batches[0])
        out = test.quant_model(batches[0])
    assert out.shape == ref.shape
    assert not torch.equal(out, ref)  # quantized
    assert sqnr_db(ref, out) > 25.0  # 37 dB when written

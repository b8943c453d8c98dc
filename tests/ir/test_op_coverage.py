"""Every op of the vocabulary round-trips: captured by both front ends, regenerated, same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent
from pytorch_nndct.ir.concrete import concrete_trace
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.ir.trace import _templates
from pytorch_nndct.ir.verify import verify


class KitchenSink(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding="same")
        self.c3 = nn.Conv3d(1, 2, 3, padding=1)
        self.t1 = nn.ConvTranspose1d(4, 4, 2, stride=2)
        self.t3 = nn.ConvTranspose3d(2, 1, 2, stride=2)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.bn1 = nn.BatchNorm1d(4)
        self.fc = nn.Linear(8, 8)
        self.prelu_like = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn(self.c2(x))  # [B, 8, 8, 8]
        y = F.hardtanh(y, -2.0, 2.0) + F.relu6(y) - F.leaky_relu(y, 0.1) * F.gelu(y)
        y = F.silu(y) + torch.sigmoid(y) / (torch.tanh(y) + 2) + F.hardswish(y) * F.hardsigmoid(y)
        y = F.avg_pool2d(y, 2) + F.max_pool2d(y, 2)  # [B, 8, 4, 4]
        y = F.interpolate(y, scale_factor=2, mode="nearest") + F.interpolate(
            y, size=(8, 8), mode="bilinear", align_corners=False
        )
        y = F.pad(y, [1, 1, 1, 1])[:, :, 1:-1, 1:-1]
        a, b = torch.chunk(y, 2, dim=1)
        c, d = torch.split(y, 4, dim=1)
        y = torch.cat([a * c, b + d], dim=1)
        z = self.ln(y.permute(0, 2, 3, 1)).transpose(1, 2)  # [B, 8(w), 8(h), 8(c)]
        z = self.fc(z).softmax(-1)
        z = torch.matmul(z, z.transpose(-1, -2)).mean(dim=(2,), keepdim=True)  # [B, 8, 1, 8]
        s = z.squeeze(2).unsqueeze(1)  # [B, 1, 8, 8]
        s = F.pixel_shuffle(s.expand(-1, 4, -1, -1), 2)  # [B, 1, 16, 16]
        v = self.t1(self.c1(x.select(3, 0)))  # [B, 4, 16]
        v = self.bn1(v)
        w = self.t3(self.c3(x[:, :1].unsqueeze(2)))  # [B, 1, 2, 8, 8]
        return s.flatten(1).mean(1, keepdim=True) + v.mean() + w.mean(dim=(1, 2, 3, 4)).unsqueeze(1) + y[:, :1, 0, 0]


def _model():
    torch.manual_seed(0)
    model = KitchenSink()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.1, 0.1)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_export_front_end_maps_every_op_and_regenerates(tmp_path):
    model = _model()
    x = torch.randn(2, 4, 8, 8)
    graph = nd.trace(model, x)
    ops = {n.op for n in graph.nodes}
    assert not graph.find(Op.ATEN), [n.attrs["target"] for n in graph.find(Op.ATEN)]
    expected = {
        Op.CONV1D, Op.CONV2D, Op.CONV3D, Op.CONV_TRANSPOSE1D, Op.CONV_TRANSPOSE3D, Op.GROUP_NORM, Op.LAYER_NORM,
        Op.BATCH_NORM, Op.LINEAR, Op.HARDTANH, Op.RELU6, Op.LEAKY_RELU, Op.GELU, Op.SILU, Op.SIGMOID, Op.TANH,
        Op.HARDSWISH, Op.HARDSIGMOID, Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.AVG_POOL2D, Op.MAX_POOL2D,
        Op.INTERPOLATE, Op.PAD, Op.SLICE, Op.CHUNK, Op.SPLIT, Op.CAT, Op.PERMUTE, Op.TRANSPOSE, Op.SOFTMAX,
        Op.MATMUL, Op.MEAN, Op.SQUEEZE, Op.UNSQUEEZE, Op.EXPAND, Op.PIXEL_SHUFFLE, Op.SELECT, Op.FLATTEN,
    }  # fmt: skip
    assert expected <= ops, sorted(o.value for o in expected - ops)
    nd.optimize(graph)
    assert not graph.find(Op.BATCH_NORM)  # bn1 follows the transposed conv t1 and folds into it
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        for batch in (2, 3):
            inp = torch.randn(batch, 4, 8, 8)
            assert_float_equivalent(model(inp), loaded(inp), rtol=1e-4, atol=1e-5)


def test_concrete_front_end_handles_dispatcher_level_ops(tmp_path):
    model = _model()
    x = torch.randn(2, 4, 8, 8)
    specs = _templates(model, (x,))
    graph = concrete_trace(model, (x,), specs, "KitchenSink")
    verify(graph)
    ops = {n.op for n in graph.nodes}
    expected = {Op.CONV2D, Op.CONV3D, Op.CONV_TRANSPOSE1D, Op.BATCH_NORM, Op.LAYER_NORM, Op.GROUP_NORM}
    assert expected | {Op.MAX_POOL2D, Op.INTERPOLATE} <= ops
    assert {n.attrs["target"] for n in graph.find(Op.ATEN)} <= {
        "aten.t.default",
        "aten.mm.default",
        "aten.bmm.default",
        "aten.empty.memory_format",
    }  # a linear on a 4-D input reaches the dispatcher as view + mm: kept as float ops
    nd.optimize(graph)
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_batch_one_example(batch, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    graph = nd.optimize(nd.trace(model, torch.randn(batch, 3, 8, 8)))
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    x = torch.randn(batch, 3, 8, 8)
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x))

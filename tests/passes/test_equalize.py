"""Cross-layer equalization: the float model is unchanged, equalized pairs have balanced weight ranges."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent, prepare_model
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.passes import equalization_pairs, equalize_


def _ranges(graph, conv0, conv1):
    w0, w1 = graph.params[conv0.params["weight"]], graph.params[conv1.params["weight"]]
    channels, groups = w0.shape[0], conv1.attrs.get("groups", 1)
    r0 = w0.abs().reshape(channels, -1).amax(dim=1)
    r1 = w1.abs().reshape(groups, w1.shape[0] // groups, w1.shape[1], -1).amax(dim=(1, 3)).reshape(channels)
    return r0, r1


PAIRS = {"resnet18": 8, "mobilenet_v2": 2}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_float_outputs_unchanged_and_ranges_balanced(name, tmp_path):
    torch.manual_seed(0)
    model = prepare_model(torchvision.models.get_model(name), (3, 96, 96))
    x = torch.randn(2, 3, 96, 96)
    graph = nd.optimize(nd.trace(model, x))
    pairs = equalization_pairs(graph)
    # resnet18: conv1 -> relu -> conv2 inside each of the 8 blocks (the stem's maxpool output also feeds an
    # add); mobilenet_v2: a projection conv feeding the next conv directly (blocks 1 and 16, no residual)
    assert len(pairs) == PAIRS[name]
    before = {k: v.clone() for k, v in graph.params.items()}
    assert equalize_(graph) is True
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x), rtol=1e-4, atol=1e-5)
    for conv0, conv1 in pairs:
        r0, r1 = _ranges(graph, conv0, conv1)
        torch.testing.assert_close(r0, r1, rtol=1e-3, atol=0)  # balanced (within a few sweeps)
    changed = {k for k in graph.params if not torch.equal(graph.params[k], before[k])}
    assert {c.params["weight"] for pair in pairs for c in pair} <= changed


class DepthwisePair(nn.Module):
    """conv -> relu -> depthwise conv -> leaky relu -> avgpool -> conv, with very unequal channel ranges."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pool = nn.AvgPool2d(2)
        self.b = nn.Conv2d(6, 4, 1, groups=2)
        with torch.no_grad():
            self.a.weight.mul_(torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1.0]).reshape(6, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(torch.relu(self.a(x)))
        return self.b(self.pool(nn.functional.leaky_relu(y, 0.1)))


def test_depthwise_and_grouped_pairs(tmp_path):
    torch.manual_seed(0)
    model = DepthwisePair().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = nd.optimize(nd.trace(model, x))
    pairs = equalization_pairs(graph)
    assert [(a.scope, b.scope) for a, b in pairs] == [("a", "dw"), ("dw", "b")]
    r0, _ = _ranges(graph, *pairs[0])
    assert r0.max() / r0.min() > 1000
    equalize_(graph)
    r0, _ = _ranges(graph, *pairs[0])
    assert r0.max() / r0.min() < 100  # the spread is shared with the depthwise conv
    with torch.no_grad():
        assert_float_equivalent(model(x), nd.load_module(nd.write_module(graph, tmp_path))(x), rtol=1e-4, atol=1e-5)


def test_relu6_between_is_skipped_not_changed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3)).eval()
    graph = nd.optimize(nd.trace(model, torch.randn(2, 3, 8, 8)))
    before = {k: v.clone() for k, v in graph.params.items()}
    assert equalization_pairs(graph) == [] and equalize_(graph) is False
    assert all(torch.equal(graph.params[k], before[k]) for k in before)
    assert any(n.op is Op.RELU6 for n in graph.nodes)

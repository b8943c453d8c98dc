"""Batch-norm folding and the cleanup passes: outputs unchanged, structure as expected, golden dumps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent, golden
from pytorch_nndct.codegen import generate_source
from pytorch_nndct.ir.ops import CONV_OPS, Op
from small_models import _randomize_bn, golden_models

MODELS = golden_models()


def _run(graph_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return graph_model(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_unchanged_and_no_bn_left(name, tmp_path):
    model, x = MODELS[name]
    graph = nd.optimize(nd.trace(model, x))
    assert not graph.find(Op.BATCH_NORM)
    assert not graph.find(Op.DROPOUT)
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    for batch in (x, torch.randn(5, *x.shape[1:])):
        assert_float_equivalent(_run(model, batch), _run(loaded, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_dumps(name):
    model, x = MODELS[name]
    graph = nd.optimize(nd.trace(model, x))
    golden(f"{name}.graph.txt", nd.dump(graph))
    golden(f"{name}.py.txt", generate_source(graph, "<version>"))


def test_concat_bn_folds_into_both_convs():
    model, x = MODELS["concat_bn"]
    graph = nd.optimize(nd.trace(model, x))
    convs = [n for n in graph.nodes if n.op in CONV_OPS]
    assert len(convs) == 2 and all("bias" in c.params for c in convs)
    cat = graph.find(Op.CAT)[0]
    assert cat.users[0].op is Op.RELU


def test_bn_without_conv_becomes_channel_scale(tmp_path):
    class BnFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(self.bn(x))

    model = _randomize_bn(BnFirst())
    x = torch.randn(2, 3, 5, 5)
    graph = nd.optimize(nd.trace(model, x))
    assert [n.op for n in graph.nodes] == [Op.INPUT, Op.CHANNEL_SCALE, Op.CONV2D]
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    assert_float_equivalent(_run(model, x), _run(loaded, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_bn_folds(groups, tmp_path):
    model = _randomize_bn(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=groups), nn.BatchNorm2d(6)))
    x = torch.randn(2, 4, 5, 5)
    graph = nd.optimize(nd.trace(model, x))
    assert [n.op for n in graph.nodes] == [Op.INPUT, Op.CONV_TRANSPOSE2D]
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    assert_float_equivalent(_run(model, x), _run(loaded, x), rtol=1e-4, atol=1e-5)


def test_conv_with_two_readers_is_not_folded(tmp_path):
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _randomize_bn(TwoReaders())
    x = torch.randn(2, 3, 4, 4)
    graph = nd.optimize(nd.trace(model, x))
    assert len(graph.find(Op.CHANNEL_SCALE)) == 1
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    assert_float_equivalent(_run(model, x), _run(loaded, x), rtol=1e-4, atol=1e-5)


def test_original_model_weights_untouched():
    model, x = MODELS["conv_bn_relu"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nd.optimize(nd.trace(model, x))
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k

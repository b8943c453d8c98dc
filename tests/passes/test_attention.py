"""Attention decomposition: outputs unchanged, structure as expected, golden dump; and its quantization plan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent, golden
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.passes.attention import SDPA_TARGET
from pytorch_nndct.quant.plan import make_plan, split_float_reads_


class Attention(nn.Module):
    """One self-attention head group; `mask` selects how the mask is given."""

    def __init__(self, mask: str, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mask, self.heads = mask, heads

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.mask == "bool":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :].bool())
        elif self.mask == "float":  # the transformers style: (1 - mask) * finfo.min added to the scores
            bias = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
        elif self.mask == "causal":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, t, c))


def _example(batch: int = 3, tokens: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    keep = torch.ones(batch, tokens, dtype=torch.int64)
    keep[0, 4:] = 0
    keep[1, 2:] = 0
    return torch.randn(batch, tokens, 16), keep


def _graph(mask: str):
    torch.manual_seed(0)
    model = Attention(mask).eval()
    x, keep = _example()
    return model, (x, keep), nd.optimize(nd.trace(model, (x, keep)))


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_outputs_unchanged_and_no_sdpa_left(mask, tmp_path):
    model, inputs, graph = _graph(mask)
    assert not [n for n in graph.nodes if n.op is Op.ATEN and n.attrs["target"] == SDPA_TARGET]
    assert len(graph.find(Op.MATMUL)) == 2 and len(graph.find(Op.SOFTMAX)) == 1
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        for x, keep in (inputs, _example(batch=5)):
            assert_float_equivalent(model(x, keep), loaded(x, keep), rtol=1e-4, atol=1e-5)


def test_golden_dump():
    _, _, graph = _graph("bool")
    golden("attention_bool_mask.graph.txt", nd.dump(graph))


def test_dropout_in_training_is_left_as_one_op():
    class Drop(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)

    q = torch.randn(1, 2, 4, 8)
    graph = nd.optimize(nd.trace(Drop(), (q, q, q)))
    assert [n.attrs["target"] for n in graph.nodes if n.op is Op.ATEN] == [SDPA_TARGET]


@pytest.mark.parametrize("mask", ["bool", "float"])
def test_masks_stay_off_the_grids_and_attention_is_quantized(mask):
    """Both matmuls get points on both inputs and outputs; softmax's output is quantized; the mask, the
    masked scores and the finfo.min arithmetic get none."""
    _, _, graph = _graph(mask)
    plan = make_plan(graph)
    matmuls = graph.find(Op.MATMUL)
    for mm in matmuls:
        assert mm.name in plan.tensor_point
        assert all(src.name in plan.tensor_point for src in mm.inputs)
    softmax = graph.find(Op.SOFTMAX)[0]
    assert softmax.name in plan.outputs
    masked = softmax.inputs[0]
    assert masked.name not in plan.tensor_point and masked.name in plan.float_ops
    assert "mask" in plan.float_ops[masked.name]
    if mask == "float":
        large = [n for n in graph.nodes if n.op is Op.MUL and n.attrs.get("other") == torch.finfo(torch.float32).min]
        assert large and all(n.name not in plan.tensor_point for n in large)


def test_large_constant_buffer_gets_no_point():
    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("bias", torch.triu(torch.full((4, 4), float("-inf")), 1))

        def forward(self, x):
            return torch.softmax(self.lin(x) + self.bias, -1)

    graph = nd.optimize(nd.trace(Biased(), torch.randn(2, 4, 4)))
    plan = make_plan(graph)
    const = graph.find(Op.CONST)[0]
    assert not [p for p in plan.params if p.node == const.name]
    add = graph.find(Op.ADD)[0]
    assert add.name in plan.float_ops and add.name not in plan.tensor_point
    assert graph.find(Op.SOFTMAX)[0].name in plan.outputs


def test_residual_sum_read_by_layer_norm_is_float_and_its_inputs_quantized():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            y = self.norm(x)
            return self.norm(y + self.lin(y))

    graph = nd.optimize(nd.trace(Block(), torch.randn(2, 3, 8)))
    plan = make_plan(graph)
    add = graph.find(Op.ADD)[0]
    assert add.name in plan.float_ops and add.name not in plan.tensor_point
    assert all(src.name in plan.tensor_point for src in add.inputs)
    assert all(n.name in plan.outputs for n in graph.find(Op.LAYER_NORM))


def test_float_readers_of_a_norm_read_it_unquantized(tmp_path):
    """After split_float_reads_, the residual sum reads the norm's float output; the linear reads an identity
    that carries the norm's point; the regenerated model is unchanged in float."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.norm, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)

        def forward(self, x):
            y = self.norm(x)
            return self.norm2(y + self.lin(y))

    model, x = Block().eval(), torch.randn(2, 3, 8)
    graph = nd.optimize(nd.trace(model, x))
    assert split_float_reads_(graph)
    plan = make_plan(graph)
    first = graph.find(Op.LAYER_NORM)[0]
    add, (copy,) = graph.find(Op.ADD)[0], graph.find(Op.IDENTITY)
    assert first in add.inputs and first.name not in plan.tensor_point
    assert copy.inputs == [first] and graph.find(Op.LINEAR)[0].inputs == [copy] and copy.name in plan.outputs
    loaded = nd.load_module(nd.write_module(graph, tmp_path))
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x), rtol=1e-5, atol=1e-6)

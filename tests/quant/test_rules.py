"""change_concat_input_fix / change_pool_input_fix (the original's uif.json) and mixed data types."""

from __future__ import annotations

import torch
from torch import nn

from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.quant.config import parse_config
from pytorch_nndct.quant.plan import make_plan
from pytorch_nndct.quant.rules import apply_constraints
from pytorch_nndct.quant.table import QuantTable


class CatPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = torch.relu(self.a(x)), torch.relu(self.b(x))
        pooled = self.pool(left)  # also an output: it keeps a point of its own next to the concat's
        return torch.cat([pooled, self.pool(right) + left[:, :, ::2, ::2]], dim=1), pooled


def _setup(doc: dict):
    graph = optimize(trace(CatPool().eval(), (torch.randn(2, 3, 8, 8),)))
    plan = make_plan(graph, config=parse_config(doc))
    table = QuantTable(graph.name)
    for k, (key, spec) in enumerate(plan.outputs.items()):
        table.outputs[key] = spec.with_fix_pos(3 + k)  # every point its own fix position
    for p in plan.params:
        table.params[p.key] = p.spec.with_fix_pos(6)
    return graph, plan, table


def _fp(plan, table, node):
    return table.fix_pos(plan.tensor_point[node.name])


def test_inputs_take_the_output_fix_position_when_asked():
    graph, plan, table = _setup({})
    pools = [n for n in graph.nodes if n.op.value == "max_pool2d"]
    cat = next(n for n in graph.nodes if n.op.value == "cat")
    apply_constraints(graph, plan, table)
    assert any(_fp(plan, table, p.inputs[0]) != _fp(plan, table, p) for p in pools)  # off by default
    assert any(_fp(plan, table, i) != _fp(plan, table, cat) for i in cat.inputs)
    graph, plan, table = _setup({"change_concat_input_fix": True, "change_pool_input_fix": True})
    changes = apply_constraints(graph, plan, table)
    assert all(_fp(plan, table, i) == _fp(plan, table, cat) for i in cat.inputs)
    assert all(_fp(plan, table, p.inputs[0]) == _fp(plan, table, p) for p in pools)
    assert any("its inputs take its output's fp (config)" in line for line in changes)


def test_nothing_is_adjusted_with_float_data_types():
    graph, plan, table = _setup({"change_pool_input_fix": True, "tensor_quantize_config": {
        "bias": {"datatype": "bfloat16"}}})  # fmt: skip
    before = dict(table.outputs)
    assert apply_constraints(graph, plan, table) == [] and table.outputs == before

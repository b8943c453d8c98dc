"""Which layers a layer_quantize_config entry names: our node names, module paths, the original's node names,
torch module types and the original's functional names."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.quant.config import parse_config
from pytorch_nndct.quant.layers import LayerRef, name_matches, scope_path, type_matches
from pytorch_nndct.quant.plan import make_plan


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1(x)) + x


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer1(torch.relu(self.conv1(x)))
        y = torch.cat([y, y * 0.5], dim=1)
        return self.fc(torch.matmul(self.pool(y).flatten(1), torch.eye(8)))


@pytest.fixture(scope="module")
def traced():
    model = ResNet().eval()
    graph = optimize(trace(model, (torch.randn(2, 3, 8, 8),)))
    return graph, {name: type(m) for name, m in model.named_modules()}


def _node(graph, op: str, scope: str):
    return next(n for n in graph.nodes if n.op.value == op and n.scope == scope)


def _weight_bits(graph, types, rules) -> dict[str, int]:
    plan = make_plan(graph, config=parse_config({"layer_quantize_config": rules}), module_types=types)
    return {p.key: p.spec.bitwidth for p in plan.params if p.role == "weight"}


def test_scope_path_is_the_originals():
    types = {"": ResNet, "layer1": nn.Sequential, "layer1.0": Block, "layer1.0.conv1": nn.Conv2d}
    assert scope_path("layer1.0.conv1", types) == "ResNet/Sequential[layer1]/Block[0]/Conv2d[conv1]"
    assert scope_path("", types) == "ResNet" and scope_path("nowhere", types) is None


@pytest.mark.parametrize(
    "layer_name",
    [
        "layer1.0.conv1",  # module path
        "ResNet::ResNet/Sequential[layer1]/Block[0]/Conv2d[conv1]/input.5",  # the original's node name
        "ResNet::ResNet/Sequential[layer1]/Block[0]/Conv2d[conv1]/ret.3",  # another torch version's value name
        "ResNet/Sequential[layer1]/Block[0]/Conv2d[conv1]",  # its scope path alone
    ],
)
def test_layer_name_forms_name_one_conv(traced, layer_name):
    graph, types = traced
    conv = _node(graph, "conv2d", "layer1.0.conv1")
    bits = _weight_bits(graph, types, [{"layer_name": layer_name, "overall_quantize_config": {"bit_width": 5}}])
    assert bits.pop(conv.params["weight"]) == 5 and set(bits.values()) == {8}


def test_layer_name_also_takes_node_names_and_enclosing_modules(traced):
    graph, types = traced
    conv = _node(graph, "conv2d", "layer1.0.conv1")
    for name in (conv.name, f"ResNet::{conv.name}"):
        bits = _weight_bits(graph, types, [{"layer_name": name, "overall_quantize_config": {"bit_width": 5}}])
        assert bits[conv.params["weight"]] == 5 and sorted(bits.values()).count(5) == 1
    bits = _weight_bits(graph, types, [{"layer_name": "layer1", "overall_quantize_config": {"bit_width": 5}}])
    assert sorted(bits.values()) == [5, 5, 8, 8]  # both blocks' convs, not conv1 or fc
    assert not name_matches("ResNet::ResNet/Sequential[layer1]/Block[0]/input.2", LayerRef(
        "relu_9", None, "layer1.0.conv1", nn.Conv2d, "ResNet/Sequential[layer1]/Block[0]/Conv2d[conv1]"))  # fmt: skip


@pytest.mark.parametrize(
    ("layer_type", "op"),
    [("torch.nn.Conv2d", "conv2d"), ("Conv2d", "conv2d"), ("Linear", "linear"), ("add", "add"), ("cat", "cat"),
     ("matmul", "matmul"), ("mul", "mul"), ("torch.nn.ReLU", "relu"), ("AdaptiveAvgPool2d", "adaptive_avg_pool2d")],
)  # fmt: skip
def test_layer_type_forms(traced, layer_type, op):
    graph, types = traced
    refs = {n.name: LayerRef(n.name, n.op, n.scope, types.get(n.scope) if n.scope else None) for n in graph.nodes}
    matched = {n.op.value for n in graph.nodes if type_matches(layer_type, refs[n.name])}
    assert matched == {op}


def test_activation_rules_see_every_node_of_the_group(traced):
    graph, types = traced
    rule = {"layer_type": "ReLU", "quantizable_data_type": ["activation"],
            "overall_quantize_config": {"bit_width": 6}}  # fmt: skip
    plan = make_plan(graph, config=parse_config({"layer_quantize_config": [rule]}), module_types=types)
    relu = _node(graph, "relu", "layer1.0.relu")  # conv1 -> relu: one point, after the relu
    assert plan.outputs[relu.name].bitwidth == 6
    assert all(p.spec.bitwidth == 8 for p in plan.params)  # the entry lists only activations


def test_a_layers_input_settings_apply_to_the_network_input_it_reads(traced):
    graph, types = traced
    rule = {"layer_name": "conv1", "quantizable_data_type": ["input"], "overall_quantize_config": {"bit_width": 7}}
    plan = make_plan(graph, config=parse_config({"layer_quantize_config": [rule]}), module_types=types)
    assert plan.outputs[graph.inputs[0].name].bitwidth == 7


def test_an_entry_that_names_nothing_is_reported(traced, caplog):
    graph, types = traced
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        make_plan(graph, config=parse_config({"layer_quantize_config": [{"layer_type": "LSTM"}]}), module_types=types)
    assert "layer_type 'LSTM' matches no layer of this model" in caplog.text

"""The quant plan's hook for hardware-aware quantization: nodes a target cannot run are planned as float ops."""

from __future__ import annotations

import torch
from torch import nn

from pytorch_nndct.codegen import load_module, write_module
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.quant.plan import make_plan
from pytorch_nndct.quant.runtime import Mode, QuantState, attach
from pytorch_nndct.targets import cpu_ops


class LeakyNet(nn.Module):
    """conv -> LeakyReLU(0.2) -> conv: the DPU only runs slope 26/256, so the activation stays on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


def _graph():
    torch.manual_seed(0)
    return optimize(trace(LeakyNet().eval(), (torch.randn(2, 3, 8, 8),)))


def test_float_nodes_are_planned_as_float_ops():
    graph = _graph()
    (conv1, conv2), leaky = graph.find(Op.CONV2D), graph.find(Op.LEAKY_RELU)[0]
    plain = make_plan(graph)
    assert plain.tensor_point[conv1.name] == leaky.name  # conv -> leaky is one group, one point after the leaky
    assert conv1.name not in plain.outputs

    reasons = cpu_ops(graph, "DPUCZDX8G_ISA1_B4096")
    assert reasons == {leaky.name: "Its alpa is 0.2, but DPU only support 0.1015625."}
    plan = make_plan(graph, float_nodes=reasons)
    assert plan.float_ops == reasons
    assert conv1.name in plan.outputs  # the conv's group ends at the conv now
    assert leaky.name in plan.outputs  # the float output feeds a quantized conv: it gets a point there
    assert {p.node for p in plan.params} == {conv1.name, conv2.name}

    no_conv2 = make_plan(graph, float_nodes={conv2.name: "test"})
    assert {p.node for p in no_conv2.params} == {conv1.name}  # a float op's parameters are not quantized
    assert conv2.name not in no_conv2.outputs and no_conv2.float_ops[conv2.name] == "test"
    assert no_conv2.tensor_point[conv1.name] == leaky.name  # conv1 -> leaky is still one quantized group


def test_a_float_leaky_relu_keeps_its_slope(tmp_path):
    graph = _graph()
    leaky = graph.find(Op.LEAKY_RELU)[0]
    k = graph.nodes.index(leaky)
    outputs = {}
    for name, float_nodes in (("dpu", None), ("float", {leaky.name: "slope"})):
        plan = make_plan(graph, float_nodes=float_nodes)
        model = load_module(write_module(graph, tmp_path / name))
        attach(model, graph, plan, QuantState(Mode.CALIB))
        seen = {}
        getattr(model, f"module_{k}").register_forward_hook(lambda m, a, out, seen=seen: seen.update(x=a[0], y=out))
        with torch.no_grad():
            model(torch.randn(2, 3, 8, 8))
        x = seen["x"]
        outputs[name] = (x, seen["y"])
    # the output is fake-quantized (its point feeds conv2): measure the slope on clearly negative inputs
    for name, slope in (("float", 0.2), ("dpu", 26 / 256)):  # host: the model's own slope; DPU: 26/256
        x, y = outputs[name]
        negative = x < -0.5
        assert negative.sum() > 20
        assert abs((y[negative] / x[negative]).median().item() - slope) < 0.02, name

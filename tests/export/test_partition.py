"""The partition report: without a target, what our exporter lowers; with one, that target's rules."""

from __future__ import annotations

import torch
from torch import nn

from pytorch_nndct.export.deploy import lower
from pytorch_nndct.export.partition import format_partition, partition
from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.quant.plan import make_plan
from pytorch_nndct.quant.table import QuantTable


class EltwiseMul(nn.Module):
    """Two convolutions multiplied: DPUCAHX8H_ISA2's eltwise engine only adds."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) * self.b(x))


def test_a_target_decides_the_partition():
    torch.manual_seed(0)
    graph = optimize(trace(EltwiseMul().eval(), (torch.randn(2, 3, 8, 8),)))
    plan = make_plan(graph)
    deploy = lower(graph, plan, QuantTable(graph.name))
    plain = format_partition(partition(graph, plan, deploy))
    assert plain.splitlines()[-1] == "5 of 5 ops on the DPU, 0 on the CPU"

    rows = partition(graph, plan, deploy, "DPUCAHX8H_ISA2")
    by_op = {r.op: r for r in rows}
    assert by_op["input"].device == "USER" and by_op["conv2d"].reason == "conv-engine"
    # eltwise_engine.elew_type of DPUCAHX8H_ISA2 is [add]
    assert by_op["mul"].device == "CPU"
    assert by_op["mul"].reason == "DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add)."
    assert by_op["relu"].device == "CPU" and "which is not on DPU" in by_op["relu"].reason
    text = format_partition(rows)
    assert text.splitlines()[-1] == "2 of 5 ops on the DPU, 2 on the CPU, 1 from the user (network inputs)"

    rows = partition(graph, plan, deploy, "DPUCZDX8G_ISA1_B4096")  # eltwise add, mult; nonlinear relu
    assert {r.op: (r.device, r.reason) for r in rows}["relu"] == ("DPU", "fused into mul_3")

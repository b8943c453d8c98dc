"""Partition report: which ops a DPU would run and which stay on the CPU, with the reason for each.

In the spirit of the original's Inspector, without its closed compiler: an op runs on the DPU when it has
an XIR equivalent we lower, its inputs are fixed-point and it is quantized (not one of the float ops the
plan leaves to the host). Given a target (a name, a '0x' fingerprint or a `Target`), the target's rules decide
instead (`pytorch_nndct.targets.assign_devices`): engines, kernel / stride / pad ranges, fused nonlinear types,
channel and weight-buffer limits; network inputs are then the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.ops import Op
from ..quant.plan import QuantPlan
from ..targets import Target, assign_devices
from .deploy import DeployGraph

__all__ = ["PartitionRow", "format_partition", "partition"]

_STRUCTURE = frozenset({Op.SIZE, Op.SCALAR, Op.CONST})


@dataclass(frozen=True)
class PartitionRow:
    node: str
    op: str
    device: str  # "DPU" or "CPU" ("USER" for network inputs when a target decides)
    reason: str
    scope: str


def partition(
    graph: Graph, plan: QuantPlan, deploy: DeployGraph, target: Target | str | None = None
) -> list[PartitionRow]:
    if target is not None:
        return _by_target(graph, target)
    custom_by_node = {op.node: deploy.custom[op.name] for op in deploy.ops if op.name in deploy.custom}
    rows = []
    for node in graph.nodes:
        if node.op in _STRUCTURE:
            continue
        if node.name in custom_by_node:
            row = PartitionRow(node.name, node.op.value, "CPU", custom_by_node[node.name], node.scope)
        elif node.name in plan.float_ops:
            row = PartitionRow(node.name, node.op.value, "CPU", plan.float_ops[node.name], node.scope)
        else:
            reason = "network input" if node.op is Op.INPUT else "quantized, supported"
            row = PartitionRow(node.name, node.op.value, "DPU", reason, node.scope)
        rows.append(row)
    return rows


def _by_target(graph: Graph, target: Target | str) -> list[PartitionRow]:
    rows = []
    for name, a in assign_devices(graph, target).items():
        node = graph.node(name)
        if node.op in _STRUCTURE:
            continue
        if a.device == "USER":
            reason = "network input"
        elif a.device == "DPU":
            reason = a.engine if a.engine.startswith("fused") else f"{a.engine}-engine" if a.engine else "moves data"
        else:
            reason = a.reason
        rows.append(PartitionRow(name, node.op.value, str(a.device), reason, node.scope))
    return rows


def format_partition(rows: list[PartitionRow]) -> str:
    """A text table plus a summary line."""
    dpu = sum(r.device == "DPU" for r in rows)
    user = sum(r.device == "USER" for r in rows)
    width = max([len(r.node) for r in rows] + [4])
    lines = [f"{'node':<{width}}  {'op':<20} device  reason"]
    lines += [f"{r.node:<{width}}  {r.op:<20} {r.device:<6}  {r.reason}" + (f"  [{r.scope}]" if r.scope else "")
              for r in rows]  # fmt: skip
    summary = f"{dpu} of {len(rows)} ops on the DPU, {len(rows) - dpu - user} on the CPU"
    lines.append(summary + (f", {user} from the user (network inputs)" if user else ""))
    return "\n".join(lines) + "\n"

"""Assign every node of a graph to the DPU, the CPU or the user, with the reasons (VAIQ35 1.3, 2).

`assign_devices(graph, target)` applies the per-op rules of `rules.py` in topological order, then the original
allocator's post-processing (`nndct_shared/inspector/device_allocator.py`):
- inputs are the user's (`USER`); a constant is on the DPU when one of its readers is, else
  "All the children nodes are assigned to CPU.";
- a reshape / flatten / squeeze / unsqueeze follows its input ("The input of reshape is not on DPU."), and goes to
  the CPU when its batch dimension changes and not all of its readers are on the DPU ("First dimension is
  changed.");
- a concat whose inputs are all off the DPU goes to the CPU ("All input of concat are on CPU."), and so does one
  with an input off the DPU unless it joins 4-D feature maps along the channels.
Shape arithmetic (size, scalar) is not part of the deployed graph and gets no entry.
`cpu_ops(graph, target)` lists what the target cannot run: the ops hardware-aware quantization keeps in float.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..export.deploy import LOWERINGS
from ..ir.graph import Graph, Node
from ..ir.ops import Op
from .rules import RULES, Context, Verdict, meta_of, op_label, shape_of
from .table import Target, get_target

__all__ = ["NO_RULE", "Assignment", "Device", "assign_devices", "cpu_ops"]


class Device(enum.StrEnum):
    DPU = "DPU"
    CPU = "CPU"
    USER = "USER"


@dataclass(frozen=True)
class Assignment:
    device: Device
    reasons: tuple[str, ...] = ()  # why it is not on the DPU (empty on the DPU and for the user's nodes)
    engine: str = ""  # DPU nodes: the engine that runs it ("conv", "alu", "fused into conv2d_3", ...)

    @property
    def reason(self) -> str:
        return " ".join(self.reasons)


_SKIPPED = frozenset({Op.SIZE, Op.SCALAR})
NO_RULE = {  # ops decided here rather than by a rule
    Op.INPUT: "the network inputs are the user's (USER)",
    Op.CONST: "a constant follows its readers (post-processing)",
    Op.SIZE: "shape arithmetic is not part of the deployed graph",
    Op.SCALAR: "shape arithmetic is not part of the deployed graph",
}
_RESHAPES = frozenset({Op.FLATTEN, Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE, Op.CONTIGUOUS})
_FLOAT_TYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


def _judge(ctx: Context, node: Node) -> Verdict:
    meta = meta_of(node)
    if meta is not None and len(meta.shape) > 4:
        return Verdict((f"DPU supports tensors of up to 4 dimensions, but the output of {op_label(node)} is "
                        f"{len(meta.shape)}-D {list(meta.shape)}.",))  # fmt: skip
    if meta is not None and meta.dtype not in _FLOAT_TYPES and node.op is not Op.GETITEM:
        return Verdict((f"{op_label(node)} computes {meta.dtype} values; the DPU computes quantized float tensors.",))
    found = RULES[node.op](ctx, node)
    if node.op not in LOWERINGS and not any("can't be converted to XIR" in r for r in found.reasons):
        return Verdict((*found.reasons, f"{op_label(node)} can't be converted to XIR."))
    return found


def _set(ctx: Context, out: dict[str, Assignment], node: Node, a: Assignment) -> None:
    out[node.name] = a
    ctx.on_dpu[node.name] = a.device is Device.DPU
    if a.device is Device.DPU:
        ctx.engines[node.name] = a.engine


def _readers_on_dpu(ctx: Context, node: Node) -> bool:
    return node.name not in ctx.outputs and all(ctx.dpu(u) for u in node.users if u.op not in _SKIPPED)


def _post_process(ctx: Context, graph: Graph, out: dict[str, Assignment]) -> None:
    cpu = Device.CPU
    for node in graph.nodes:
        if node.op in _RESHAPES and node.name in out:
            src = node.inputs[0]
            if not ctx.dpu(src):
                if out[node.name].device is Device.DPU:
                    _set(ctx, out, node, Assignment(cpu, ("The input of reshape is not on DPU.",)))
            elif out[node.name].device is Device.DPU and not _readers_on_dpu(ctx, node):
                before, after = shape_of(src), shape_of(node)
                if before[:1] != after[:1]:
                    _set(ctx, out, node, Assignment(cpu, ("First dimension is changed.",)))
        elif node.op is Op.CAT and out[node.name].device is Device.DPU:
            off = [i for i in node.inputs if not ctx.dpu(i)]
            shape, dim = shape_of(node), node.attrs["dim"]
            if off and len(off) == len(node.inputs):
                _set(ctx, out, node, Assignment(cpu, ("All input of concat are on CPU.",)))
            elif off and (len(shape) != 4 or dim % 4 != 1):
                why = (
                    f"One of the input is from non-DPU device. And output is not 4d. And axis == {dim} is not "
                    f"supported (only dim 1, the channels of a 4-D feature map; here a {len(shape)}-D output)."
                )
                _set(ctx, out, node, Assignment(cpu, (why,)))
    for node in graph.nodes:
        if node.op is Op.CONST:
            if any(ctx.dpu(u) for u in node.users):
                _set(ctx, out, node, Assignment(Device.DPU, engine="load"))
            else:
                _set(ctx, out, node, Assignment(cpu, ("All the children nodes are assigned to CPU.",)))


def assign_devices(graph: Graph, target: Target | str) -> dict[str, Assignment]:
    """The device of each node (but shape arithmetic) on `target` (a Target, a name or a '0x' fingerprint)."""
    tgt = target if isinstance(target, Target) else get_target(target)
    ctx = Context(tgt, graph, outputs=frozenset(n.name for n in graph.output_nodes))
    out: dict[str, Assignment] = {}
    for node in graph.nodes:
        if node.op in _SKIPPED or node.op is Op.CONST:
            continue
        if node.op is Op.INPUT:
            _set(ctx, out, node, Assignment(Device.USER))
            continue
        found = _judge(ctx, node)
        _set(ctx, out, node, Assignment(Device.DPU, engine=found.engine) if found.ok else
             Assignment(Device.CPU, found.reasons))  # fmt: skip
    _post_process(ctx, graph, out)
    return {n.name: out[n.name] for n in graph.nodes if n.name in out}


def cpu_ops(graph: Graph, target: Target | str) -> dict[str, str]:
    """Node name -> why `target` cannot run it, for every node assigned to the CPU (they stay float)."""
    return {name: a.reason for name, a in assign_devices(graph, target).items() if a.device is Device.CPU}

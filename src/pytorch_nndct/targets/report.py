"""Inspector's outputs (VAIQ35 2): the `inspect_<target>.txt` report, the screen tables and the graph drawing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import NndctError
from ..ir.graph import Graph, Node, Ref
from .assign import Assignment, Device
from .rules import op_label
from .table import Target

__all__ = ["IMAGE_FORMATS", "cpu_rows", "draw", "report_text", "text_table"]

IMAGE_FORMATS = ("svg", "png")
_SEPARATOR = "=" * 160
_COLOURS = {Device.DPU: "blue", Device.CPU: "red", Device.USER: "black"}

_HEADER = """\
# inspect_<target>.txt: how the target runs each operation of the model, as pytorch_nndct's Inspector sees it.
# Fields:
# target info: the target the model was inspected for, and the capabilities the decisions used.
# inspection summary: the operations assigned to the CPU and why, or that all run on the DPU.
# graph name: the name of the graph of the model (its class name).
# node name: the name of a node in the graph (as in the generated <Model>.py and quant_info.json).
# input nodes: the nodes it reads.
# output nodes: the nodes that read it ('return' marks an output of the model).
# op type: the type of the operation.
# outputs shape: the shape of its output (PyTorch layout, NCHW; the .xmodel stores feature maps as NHWC).
# op attributes: the attributes of the operation, and the shapes of its parameters.
# assigned device: dpu, cpu or user (the network inputs, which the application provides).
# hardware constraints: for an operation on the CPU, why the target cannot run it: the limit and the value
#   that broke it.
# node messages: extra information, e.g. the DPU engine that runs the operation, or the operation it is fused into.
# source range: where the operation comes from in the model's code (module path and source line).
#
# Hints:
# The DPU computes feature maps in NHWC layout while PyTorch uses NCHW, so a reshape or flatten of a feature map
# becomes a transpose followed by a reshape in the deployed model, unless the height and width are 1.
# Example: conv:[1, 64, 1, 1] -> reshape(1, -1):[1, 64] needs no transpose, conv:[1, 3, 4, 4] -> reshape(1, -1):
# [1, 48] does; permuting the feature map to NHWC in the float model (permute(0, 2, 3, 1)) before the reshape
# keeps the data order the same as the DPU's.
# Our assignment is rule-based from the target table; the original's needs its closed compiler, which may fuse or
# split operations differently.
# Explanation of some hardware constraints messages:
#   "{op type} can't be converted to XIR.": the operation cannot be written as an XIR operation.
#   "{op type} can't be assigned to DPU.": the operation can be written in XIR, but no engine of the target runs it.
#   "The input of reshape is not on DPU.", "First dimension is changed.", "All input of concat are on CPU.",
#   "All the children nodes are assigned to CPU.": a layout operation or a constant follows its neighbours.
"""


def _shape_text(node: Node) -> str:
    meta = node.meta
    metas = meta if isinstance(meta, tuple) else (meta,)
    return ",".join(str(list(m.shape)) for m in metas if m is not None and hasattr(m, "shape"))


def _value(v: Any) -> str:
    if isinstance(v, Ref):
        return f"<input {v.index}>"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def _attributes(graph: Graph, node: Node) -> list[str]:
    lines = [f"  {k}: {_value(v)}" for k, v in node.attrs.items()]
    for role, key in node.params.items():
        lines.append(f"  {role}: {list(graph.params[key].shape)} ({key})")
    return lines


def _source(node: Node) -> str:
    parts = ([f"module '{node.scope}'"] if node.scope else []) + ([node.source] if node.source else [])
    return ", ".join(parts)


def _message(a: Assignment) -> str:
    if a.device is not Device.DPU or not a.engine:
        return ""
    if a.engine.startswith("fused"):
        return f"{a.engine} (applied by its engine)."
    return f"runs on the {a.engine}-engine."


def text_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain table: headers, a rule of dashes under each column, then the rows (like tabulate's 'simple')."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cpu_rows(graph: Graph, assignments: dict[str, Assignment]) -> list[list[str]]:
    return [[name, op_label(graph.node(name)), a.reason] for name, a in assignments.items() if a.device is Device.CPU]


def report_text(graph: Graph, assignments: dict[str, Assignment], target_text: str, target: Target) -> str:
    out = [_HEADER, _SEPARATOR, "target info:", _SEPARATOR, target_text, target.describe(), ""]
    out += [_SEPARATOR, "inspection summary:", _SEPARATOR]
    rows = cpu_rows(graph, assignments)
    if rows:
        out += ["The operators assigned to the CPU are as follows:",
                text_table(rows, ["node name", "op type", "hardware constraints"])]  # fmt: skip
    else:
        out.append("All the operators are assigned to the DPU.")
    out += [_SEPARATOR, f"graph name: {graph.name}"]
    outputs = {n.name for n in graph.output_nodes}
    for node in graph.nodes:
        a = assignments.get(node.name)
        if a is None:
            continue
        readers = [u.name for u in node.users if u.name in assignments] + (["return"] if node.name in outputs else [])
        out += [_SEPARATOR, f"node name: {node.name}", f"input nodes: {[i.name for i in node.inputs]}",
                f"output nodes: {readers}", f"op type: {op_label(node)}", f"outputs shape: {_shape_text(node)}",
                "op attributes:", *_attributes(graph, node), f"assigned device: {a.device.value.lower()}"]  # fmt: skip
        if a.reasons:
            out.append(f"hardware constraints: {a.reason}")
        if message := _message(a):
            out += ["node messages:", f"  {message}"]
        if source := _source(node):
            out += ["source range:", source]
    return "\n".join(out) + "\n"


def draw(graph: Graph, assignments: dict[str, Assignment], fmt: str) -> tuple[str, bytes]:
    """(dot source, image bytes) of the graph, nodes coloured by device: blue DPU, red CPU, black user."""
    try:
        import graphviz
    except ImportError as exc:
        raise NndctError(
            "drawing the graph needs the graphviz Python package and Graphviz's 'dot' program. Fix: pip install "
            "graphviz, and install Graphviz (apt-get install graphviz), or call inspect() without image_format."
        ) from exc
    dot = graphviz.Digraph(graph.name)
    for node in graph.nodes:
        a = assignments.get(node.name)
        if a is None:
            continue
        label = (f"type:{op_label(node)}\nname:{node.name}\nassigned device:{a.device.value.lower()}\n"
                 f"out shape:[{_shape_text(node)}]")  # fmt: skip
        dot.node(node.name, label=label, color=_COLOURS[a.device])
    for node in graph.nodes:
        for src in node.inputs:
            if src.name in assignments and node.name in assignments:
                dot.edge(src.name, node.name)
    try:
        image = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise NndctError(
            f"drawing the graph as {fmt} needs Graphviz's 'dot' program, which is not installed. Fix: install "
            "Graphviz (apt-get install graphviz, brew install graphviz), or call inspect() without image_format."
        ) from exc
    return dot.source, image

"""Export-time constraints between fix positions (SPEC 2.3), applied to a QuantTable.

First, from the last node to the first, the config's `change_concat_input_fix` / `change_pool_input_fix`
give the inputs of each concat / pooling op (max, average, adaptive average) the fix position of its output
(as the original does). Then, from the first node on, the DPU's relations between fix positions. Like the
original, nothing is adjusted when the config has float data types; points without a fix position (float
steps) are left alone.
"""

from __future__ import annotations

import logging

from ..ir.graph import Graph, Node
from ..ir.ops import CONV_OPS, Op
from .plan import QuantPlan
from .table import QuantTable

__all__ = ["apply_constraints", "fix_ties"]

log = logging.getLogger("pytorch_nndct")

_CONV_LIKE = frozenset({*CONV_OPS, Op.LINEAR})
_SAME_AS_INPUT = frozenset({Op.PAD, Op.SLICE})
_POOLS = frozenset({Op.MAX_POOL2D, Op.AVG_POOL2D, Op.ADAPTIVE_AVG_POOL2D})


def _key_of(plan: QuantPlan, node: Node) -> str | None:
    return plan.tensor_point.get(node.name)


class _Adjuster:
    def __init__(self, table: QuantTable) -> None:
        self.table = table
        self.changes: list[str] = []

    def get(self, key: str | None) -> int | None:
        return None if key is None else self.table.fix_pos(key)

    def set(self, key: str, value: int, why: str) -> None:
        old = self.table.fix_pos(key)
        if old != value:
            self.table.set_fix_pos(key, value)
            self.changes.append(f"{key}: fix_pos {old} -> {value} ({why})")


def _conv_like(adj: _Adjuster, plan: QuantPlan, node: Node) -> None:
    fp_i = adj.get(_key_of(plan, node.inputs[0]))
    w_key, b_key = node.params.get("weight"), node.params.get("bias")
    o_key = _key_of(plan, node)
    fp_w, fp_o = adj.get(w_key), adj.get(o_key)
    if None in (fp_i, fp_w, fp_o):
        return
    shift_cut = fp_w + fp_i - fp_o
    if shift_cut < 0:
        fp_o = fp_w + fp_i
        adj.set(o_key, fp_o, f"shift_cut of {node.name} < 0")
    elif shift_cut > 16:
        fp_w = fp_o - fp_i + 16
        adj.set(w_key, fp_w, f"shift_cut of {node.name} > 16")
    shift_cut = fp_w + fp_i - fp_o
    fp_b = adj.get(b_key)
    if fp_b is None:
        return
    lower = min(0, shift_cut - 16)
    shift_bias = fp_w + fp_i - fp_b
    if shift_bias < lower:
        adj.set(b_key, fp_w + fp_i - lower, f"shift_bias of {node.name} < {lower}")
    elif shift_bias > 16:
        adj.set(w_key, fp_b - fp_i + 16, f"shift_bias of {node.name} > 16")


def _inputs_take_output_fp(adj: _Adjuster, plan: QuantPlan, node: Node) -> None:
    o_key = _key_of(plan, node)
    fp_o = adj.get(o_key)
    if fp_o is None:
        return
    for src in node.inputs:
        i_key = _key_of(plan, src)
        if i_key is not None and i_key != o_key and adj.get(i_key) is not None:
            adj.set(i_key, fp_o, f"{node.op.value} {node.name}: its inputs take its output's fp (config)")


def apply_constraints(graph: Graph, plan: QuantPlan, table: QuantTable, quiet: bool = False) -> list[str]:
    """Adjust `table` in place so the DPU can run it; returns one line per change (logged unless `quiet`)."""
    adj = _Adjuster(table)
    if not plan.only_int:
        return adj.changes
    for node in reversed(graph.nodes):
        if (node.op is Op.CAT and plan.change_concat_input_fix) or (node.op in _POOLS and plan.change_pool_input_fix):
            _inputs_take_output_fp(adj, plan, node)
    for node in graph.nodes:
        if node.op in _CONV_LIKE:
            _conv_like(adj, plan, node)
        elif node.op is Op.HARDSIGMOID:
            i_key, o_key = _key_of(plan, node.inputs[0]), _key_of(plan, node)
            if (fp := adj.get(o_key)) is not None and fp < 7:
                adj.set(o_key, 7, f"hard-sigmoid {node.name} output fp >= 7")
            if (fp := adj.get(i_key)) is not None and fp < 0:
                adj.set(i_key, 0, f"hard-sigmoid {node.name} input fp >= 0")
        elif node.op is Op.HARDSWISH:
            i_key, o_key = _key_of(plan, node.inputs[0]), _key_of(plan, node)
            if (fp_i := adj.get(i_key)) is not None and fp_i < 0:
                adj.set(i_key, 0, f"hard-swish {node.name} input fp >= 0")
                fp_i = 0
            if fp_i is not None and (fp_o := adj.get(o_key)) is not None and fp_o > fp_i + 7:
                adj.set(o_key, fp_i + 7, f"hard-swish {node.name} output fp <= input fp + 7")
        elif node.op in _SAME_AS_INPUT or (node.op is Op.INTERPOLATE and node.attrs.get("mode") == "nearest"):
            i_key, o_key = _key_of(plan, node.inputs[0]), _key_of(plan, node)
            if i_key != o_key and (fp_i := adj.get(i_key)) is not None and adj.get(o_key) is not None:
                adj.set(o_key, fp_i, f"{node.op.value} {node.name} keeps its input's fp")
    for line in adj.changes if not quiet else ():
        log.info("constraint: %s", line)
    return adj.changes


def _shares_input_fp(plan: QuantPlan, node: Node) -> bool:
    """The node's output and its inputs end with one fix position (the relations above that set it equal)."""
    if node.op is Op.CAT:
        return plan.change_concat_input_fix
    if node.op in _POOLS:
        return plan.change_pool_input_fix
    return node.op in _SAME_AS_INPUT or (node.op is Op.INTERPOLATE and node.attrs.get("mode") == "nearest")


def fix_ties(graph: Graph, plan: QuantPlan) -> list[tuple[str, ...]]:
    """The output points grouped by the constraints that give them one fix position (so one bit width):
    concat / pooling inputs under the change_*_input_fix flags, pad, slice and nearest upsampling; each
    point not tied to another is a group of its own. Groups and their keys are in graph order."""
    parent = {key: key for key in plan.outputs}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for node in graph.nodes:
        o_key = _key_of(plan, node)
        if o_key not in parent or not _shares_input_fp(plan, node):
            continue
        sources = node.inputs if node.op is Op.CAT else node.inputs[:1]
        for src in sources:
            i_key = _key_of(plan, src)
            if i_key in parent:
                parent[root(i_key)] = root(o_key)
    groups: dict[str, list[str]] = {}
    for key in plan.outputs:
        groups.setdefault(root(key), []).append(key)
    return [tuple(keys) for keys in groups.values()]

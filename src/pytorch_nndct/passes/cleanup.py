"""Cleanup passes: drop dropout and identities, remove dead code and unused parameters."""

from __future__ import annotations

from ..ir.graph import Graph, Node
from ..ir.ops import Op

__all__ = ["remove_dead_code_", "remove_dropout_", "remove_identity_"]


def _bypass(graph: Graph, op: Op) -> bool:
    changed = False
    for node in graph.find(op):
        graph.replace_all_uses(node, node.inputs[0])
        graph.remove_node(node)
        changed = True
    return changed


def remove_dropout_(graph: Graph) -> bool:
    """Dropout is the identity at inference: readers read its input."""
    return _bypass(graph, Op.DROPOUT)


def remove_identity_(graph: Graph) -> bool:
    """clone / alias / detach copies: readers read the original."""
    return _bypass(graph, Op.IDENTITY)


def _has_effect(node: Node) -> bool:
    return node.op is Op.INPUT or bool(node.attrs.get("mutates"))


def remove_dead_code_(graph: Graph) -> bool:
    """Remove nodes whose results nobody reads, then parameters no node uses."""
    live = {id(n) for n in graph.output_nodes}
    changed = False
    for node in reversed(list(graph.nodes)):
        if id(node) in live or _has_effect(node) or node.users:
            continue
        graph.remove_node(node)
        changed = True
    used = {key for n in graph.nodes for key in n.params.values()}
    for key in [k for k in graph.params if k not in used]:
        del graph.params[key]
        changed = True
    return changed

"""Invariants every graph satisfies between passes."""

from __future__ import annotations

from .graph import Graph, Node, Ref, refs_in
from .ops import OPS, Op

__all__ = ["GraphInvariantError", "verify"]


class GraphInvariantError(AssertionError):
    """A graph broke one of the IR's invariants (a bug in the pass or front end that built it)."""


def verify(graph: Graph) -> None:
    """Check the graph's invariants; raise GraphInvariantError naming every broken one."""
    problems: list[str] = []
    seen: set[int] = set()
    names: set[str] = set()
    members = {id(n) for n in graph.nodes}
    for node in graph.nodes:
        problems += _check_node(graph, node, seen, members)
        if node.name in names:
            problems.append(f"duplicate node name {node.name!r}")
        names.add(node.name)
        seen.add(id(node))
    input_nodes = [n for n in graph.nodes if n.op is Op.INPUT]
    if [id(n) for n in input_nodes] != [id(n) for n in graph.inputs]:
        problems.append("graph.inputs does not list the INPUT nodes in graph order")
    for spec in graph.input_specs:
        for ref in refs_in(spec.template):
            if not 0 <= ref.index < len(graph.inputs):
                problems.append(f"input template {spec.name!r} refers to missing input {ref.index}")
    for ref in refs_in(graph.output):
        if not 0 <= ref.index < len(graph.output_nodes):
            problems.append(f"output template refers to missing output {ref.index}")
    for out in graph.output_nodes:
        if id(out) not in members:
            problems.append(f"graph output {out.name!r} is not in the graph")
    if problems:
        raise GraphInvariantError(f"graph {graph.name!r} is invalid:\n  " + "\n  ".join(problems))


def _check_node(graph: Graph, node: Node, seen: set[int], members: set[int]) -> list[str]:
    problems = []
    where = node.name
    opdef = OPS[node.op]
    for src in node.inputs:
        if id(src) not in members:
            problems.append(f"{where}: reads {src.name!r}, which is not in the graph")
        elif id(src) not in seen:
            problems.append(f"{where}: reads {src.name!r}, which comes later (not topological)")
        if sum(u is node for u in src.users) != sum(i is src for i in node.inputs):
            problems.append(f"{where}: users list of {src.name!r} is out of date")
    for user in node.users:
        if not any(i is node for i in user.inputs):
            problems.append(f"{where}: lists {user.name!r} as a user, but it does not read {where}")
    for role in opdef.params:
        if role not in node.params and role not in opdef.optional:
            problems.append(f"{where}: missing parameter {role!r}")
    for role, key in node.params.items():
        if key not in graph.params:
            problems.append(f"{where}: parameter {role}={key!r} is not in graph.params")
    for attr in opdef.attrs:
        if attr not in node.attrs:
            problems.append(f"{where}: missing attribute {attr!r}")
    for ref in refs_in(node.attrs):
        if not isinstance(ref, Ref) or not 0 <= ref.index < len(node.inputs):
            problems.append(f"{where}: attribute refers to input {ref.index}, which it does not have")
    return problems

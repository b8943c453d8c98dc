"""A stable, human-readable text dump of a graph, used by golden tests and for debugging."""

from __future__ import annotations

from typing import Any

from .graph import Graph, Node, Ref, TensorMeta

__all__ = ["dump", "format_value"]


def format_value(value: Any, names: list[str] | None = None) -> str:
    """Format an attribute value deterministically; `Ref(i)` prints as `names[i]` (or `%i`)."""
    if isinstance(value, Ref):
        return names[value.index] if names is not None else f"%{value.index}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v, names) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v, names) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {format_value(v, names)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value)
    return repr(value) if isinstance(value, str) else str(value)


def _meta(meta: Any) -> str:
    if meta is None:
        return ""
    if isinstance(meta, TensorMeta):
        return f" : {meta}"
    return " : (" + ", ".join("-" if m is None else str(m) for m in meta) + ")"


def _line(node: Node) -> str:
    names = [n.name for n in node.inputs]
    parts = list(names)
    params = [f"{role}={key}" for role, key in node.params.items()]
    args = ", ".join(parts + params)
    attrs = ", ".join(f"{k}={format_value(v, names)}" for k, v in sorted(node.attrs.items()))
    attr_text = f" {{{attrs}}}" if attrs else ""
    scope = f"  # {node.scope}" if node.scope else ""
    return f"  {node.name} = {node.op.value}({args}){attr_text}{_meta(node.meta)}{scope}"


def dump(graph: Graph) -> str:
    """The whole graph as text: one line per node, then the output template."""
    lines = [f"graph {graph.name}("]
    for spec in graph.input_specs:
        lines.append(f"    {spec.name}: {format_value(spec.template, [n.name for n in graph.inputs])}")
    lines.append(") {")
    lines += [_line(n) for n in graph.nodes]
    out = format_value(graph.output, [n.name for n in graph.output_nodes])
    lines.append(f"  return {out}")
    lines.append("}")
    return "\n".join(lines) + "\n"

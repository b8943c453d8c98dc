"""Node and Graph: the graph IR every stage of the tool works on.

A `Graph` keeps its nodes in topological order. A node reads tensors (and symbolic sizes) produced by
earlier nodes through `node.inputs`; where an attribute needs one of them (a reshape whose target shape
holds the batch size), the attribute holds `Ref(i)`, meaning `node.inputs[i]`. Parameters live in
`graph.params` under their state-dict names and nodes name them in `node.params` by role. The graph's
inputs and outputs keep the user's structure (tuples, lists, dicts) as templates whose leaves are `Ref`s
into `graph.inputs` and the node list respectively. Inputs change only through `Graph` methods, which keep
every node's `users` list right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .ops import OPS, Op, OpDef

__all__ = ["Graph", "InputSpec", "Node", "Ref", "TensorMeta", "leaves", "map_refs", "refs_in"]


@dataclass(frozen=True)
class Ref:
    """A reference to `node.inputs[index]` inside an attribute, or to a node inside a graph template."""

    index: int


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of a tensor value. A dimension is an int, or a string for a symbolic size ('B')."""

    shape: tuple[int | str, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def map_refs(value: Any, fn: Callable[[Ref], Any]) -> Any:
    """Rebuild a nested attribute value (lists, tuples, dicts) with every `Ref` replaced by `fn(ref)`."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    return value


def leaves(value: Any) -> Iterator[Any]:
    """Every leaf of a nested attribute value (lists, tuples and dict values walked), in order."""
    if isinstance(value, list | tuple):
        for v in value:
            yield from leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    else:
        yield value


def refs_in(value: Any) -> Iterator[Ref]:
    """Every `Ref` inside a nested attribute value, in order."""
    return (v for v in leaves(value) if isinstance(v, Ref))


@dataclass(eq=False)
class Node:
    """One operation. Identity is the object; `name` is unique within its graph."""

    name: str
    op: Op
    inputs: list[Node] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    meta: TensorMeta | tuple[TensorMeta | None, ...] | None = None
    scope: str = ""  # module path in the float model, e.g. "layer1.0.conv1"
    source: str = ""  # "file.py:123" of the user's line that created it
    users: list[Node] = field(default_factory=list, repr=False)

    @property
    def opdef(self) -> OpDef:
        return OPS[self.op]

    def where(self) -> str:
        """Where this node comes from, for error messages."""
        parts = [f"node {self.name!r}"]
        if self.scope:
            parts.append(f"module {self.scope!r}")
        if self.source:
            parts.append(f"at {self.source}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op.value})"


@dataclass
class InputSpec:
    """One argument of the model's forward: its name and a template whose leaves are Refs to inputs."""

    name: str
    template: Any


@dataclass(eq=False)
class Graph:
    """A model as a topologically ordered list of nodes plus its parameters."""

    name: str
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    input_specs: list[InputSpec] = field(default_factory=list)
    inputs: list[Node] = field(default_factory=list)  # INPUT nodes, in template order
    output: Any = None  # template; Ref(i) leaves index `output_nodes`
    output_nodes: list[Node] = field(default_factory=list)

    # ----------------------------------------------------------------- building
    def add_node(
        self,
        op: Op,
        inputs: Iterable[Node] = (),
        *,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        meta: TensorMeta | tuple[TensorMeta | None, ...] | None = None,
        scope: str = "",
        source: str = "",
        before: Node | None = None,
    ) -> Node:
        """Create a node and insert it at the end (or just before `before`)."""
        node = Node(
            name=name or self._fresh_name(op),
            op=op,
            inputs=list(inputs),
            attrs=dict(attrs or {}),
            params=dict(params or {}),
            meta=meta,
            scope=scope,
            source=source,
        )
        for src in node.inputs:
            src.users.append(node)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        if op is Op.INPUT:
            self.inputs.append(node)
        return node

    def _fresh_name(self, op: Op) -> str:
        taken = {n.name for n in self.nodes}
        k = len(self.nodes)
        while f"{op.value}_{k}" in taken:
            k += 1
        return f"{op.value}_{k}"

    # ----------------------------------------------------------------- editing
    def set_input(self, node: Node, index: int, new: Node) -> None:
        self._remove_user(node.inputs[index], node)
        node.inputs[index] = new
        new.users.append(node)

    def set_inputs(self, node: Node, inputs: list[Node]) -> None:
        for src in node.inputs:
            self._remove_user(src, node)
        node.inputs = list(inputs)
        for src in node.inputs:
            src.users.append(node)

    def replace_all_uses(self, old: Node, new: Node) -> None:
        """Make every reader of `old` (nodes and graph outputs) read `new` instead."""
        for user in list(old.users):
            user.inputs = [new if i is old else i for i in user.inputs]
            new.users.append(user)
        old.users.clear()
        self.output_nodes = [new if n is old else n for n in self.output_nodes]

    def remove_node(self, node: Node) -> None:
        """Remove a node nobody reads any more."""
        if node.users or any(n is node for n in self.output_nodes):
            raise ValueError(f"cannot remove {node.where()}: it is still used")
        for src in node.inputs:
            self._remove_user(src, node)
        self.nodes.remove(node)
        if node in self.inputs:
            self.inputs.remove(node)

    @staticmethod
    def _remove_user(src: Node, user: Node) -> None:
        for k, u in enumerate(src.users):
            if u is user:
                del src.users[k]
                return

    def renumber(self) -> None:
        """Rename every node to `<op>_<position>`, the stable names quant_info.json keys use."""
        for k, node in enumerate(self.nodes):
            node.name = f"{node.op.value}_{k}"

    # ----------------------------------------------------------------- queries
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"graph {self.name!r} has no node named {name!r}")

    def param(self, node: Node, role: str) -> torch.Tensor | None:
        """The tensor a node uses in `role` ('weight', 'bias', ...), or None if it has none."""
        key = node.params.get(role)
        return None if key is None else self.params[key]

    def find(self, op: Op) -> list[Node]:
        return [n for n in self.nodes if n.op is op]

    def output_names(self) -> list[str]:
        """A name for each of `output_nodes`: where the outputs are a dict, the keys on its path in the output
        structure ('out'; 'feats_1' for element 1 of a tuple under 'feats'); otherwise, or where that name is
        not a plain identifier or is taken by a node or a parameter, 'output_<k>'."""
        paths: dict[int, str] = {}

        def walk(value: Any, path: list[str]) -> None:
            if isinstance(value, Ref):
                paths[value.index] = "_".join(path)
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, [*path, str(key)])
            elif isinstance(value, list | tuple):
                for k, item in enumerate(value):
                    walk(item, [*path, str(k)])

        if isinstance(self.output, dict):
            walk(self.output, [])
        taken = {n.name for n in self.nodes} | set(self.params)
        names = [paths.get(k, "") for k in range(len(self.output_nodes))]
        usable = all(n.isidentifier() and n not in taken for n in names) and len(set(names)) == len(names)
        return names if usable else [f"output_{k}" for k in range(len(self.output_nodes))]

    def unique_param_name(self, wanted: str) -> str:
        name, k = wanted, 1
        while name in self.params:
            name = f"{wanted}_{k}"
            k += 1
        return name

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

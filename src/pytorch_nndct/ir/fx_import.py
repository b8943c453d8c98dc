"""Turn a torch.fx graph of ATen calls (from torch.export or the concrete tracer) into our Graph.

This is the only place that reads torch.fx objects. Each call is bound to its schema, offered to the
trace mapping table (`aten_map.CONVERTERS`), and kept as a generic `Op.ATEN` node when no converter
takes it. In-place calls are handled the way functionalisation would: later readers of the mutated
tensor read the in-place node's result.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from ..errors import CaptureError
from .aten_map import Call, Param, Spec, TorchConst, converter_for
from .graph import Graph, InputSpec, Node, Ref, TensorMeta, map_refs
from .ops import Op

log = logging.getLogger("pytorch_nndct")

__all__ = ["FxSource", "import_fx", "user_frame"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_PKG_DIR = os.path.dirname(os.path.dirname(__file__))
_SKIPPED_PREFIXES = ("aten._assert", "aten.sym_constrain_range", "aten._assert_tensor_metadata")


@dataclass
class FxSource:
    """An fx graph plus what it cannot say itself: parameter names, inputs and output structure."""

    graph: torch.fx.Graph
    name: str
    param_of: dict[str, str]  # placeholder name -> state-dict name
    params: dict[str, torch.Tensor]
    input_specs: list[InputSpec]  # templates whose Ref(k) leaves index the user-input placeholders
    user_inputs: list[str]  # placeholder names of the user inputs, in template order
    output: Any  # template; Ref(i) leaves index `output_values`
    output_values: list[Any]
    batch_symbols: set[str] = field(default_factory=set)


def user_frame(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame that is the user's code (not torch and not this package), as 'file:line'."""
    for fr in reversed(frames):
        path = os.path.abspath(fr.filename)
        if not path.startswith((_TORCH_DIR, _PKG_DIR)) and "<frozen" not in path:
            return f"{fr.filename}:{fr.lineno}"
    return ""


_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')


def _source_of(fx_node: torch.fx.Node) -> str:
    trace = fx_node.meta.get("stack_trace") or ""
    frames = [traceback.FrameSummary(f, int(n), "") for f, n in _FRAME_RE.findall(trace)]
    return user_frame(frames)


def _scope_of(fx_node: torch.fx.Node) -> str:
    stack = fx_node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return re.sub(r"L\['self'\]\.?", "", str(path))


def _dim(d: Any, batch: set[str]) -> int | str:
    if isinstance(d, int):
        return d
    text = str(d)
    for sym in batch:
        text = re.sub(rf"\b{re.escape(sym)}\b", "B", text)
    return text


def _meta(value: Any, batch: set[str]) -> TensorMeta | tuple | None:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return TensorMeta(tuple(_dim(d, batch) for d in value.shape), dtype)
    if isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_meta(v, batch) if isinstance(v, torch.Tensor) else None for v in value)
    return None


def _const(value: Any) -> Any:
    """Non-numeric torch constants become TorchConst so the IR holds only plain data."""
    if isinstance(value, torch.dtype):
        return TorchConst(str(value))
    if isinstance(value, torch.device):
        return TorchConst("device")
    if isinstance(value, torch.layout | torch.memory_format):
        return TorchConst(str(value))
    return value


def _bind(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, arg in enumerate(target._schema.arguments):
        if k < len(args) and not arg.kwarg_only:
            out[arg.name] = args[k]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = _const(arg.default_value)
        else:
            out[arg.name] = None
    return out


def _mutates_first(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    info = schema.arguments[0].alias_info
    return bool(info and info.is_write)


def _mutates_any(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return bool(schema) and any(a.alias_info and a.alias_info.is_write for a in schema.arguments)


def _returns_view(fx_node: Any) -> bool:
    schema = getattr(getattr(fx_node, "target", None), "_schema", None)
    if schema is None or not schema.returns:
        return False
    info = schema.returns[0].alias_info
    return bool(info and not info.is_write)


class _Importer:
    def __init__(self, src: FxSource) -> None:
        self.src = src
        self.graph = Graph(name=src.name, params=dict(src.params), input_specs=src.input_specs)
        self.env: dict[torch.fx.Node, Any] = {}
        self.const_nodes: dict[str, Node] = {}
        self.tuple_firsts: set[int] = set()
        self.current: torch.fx.Node | None = None

    # ------------------------------------------------------------------ values
    def value(self, x: Any) -> Any:
        if isinstance(x, torch.fx.Node):
            if x not in self.env:
                raise CaptureError(self._where(f"reads {x.name!r}, a value that cannot be captured"))
            return self.env[x]
        if isinstance(x, list | tuple):
            return type(x)(self.value(v) for v in x)
        if isinstance(x, dict):
            return {k: self.value(v) for k, v in x.items()}
        return _const(x)

    def materialize(self, x: Any) -> Node:
        if isinstance(x, Node):
            return x
        if isinstance(x, Param):
            if x.name not in self.const_nodes:
                t = self.graph.params[x.name]
                meta = TensorMeta(tuple(t.shape), str(t.dtype).removeprefix("torch."))
                first = self._first_real_node()
                self.const_nodes[x.name] = self.graph.add_node(
                    Op.CONST,
                    params={"value": x.name},
                    meta=meta,
                    scope=x.name.rpartition(".")[0],
                    before=first,
                )
            return self.const_nodes[x.name]
        raise CaptureError(self._where(f"expected a tensor, got {x!r}"))

    def _first_real_node(self) -> Node | None:
        for n in self.graph.nodes:
            if n.op is not Op.INPUT:
                return n
        return None

    def templatize(self, value: Any, inputs: list[Node]) -> Any:
        """Replace nodes and params inside a value by Refs into `inputs` (appending as needed)."""
        if isinstance(value, Node | Param):
            node = self.materialize(value)
            for k, existing in enumerate(inputs):
                if existing is node:
                    return Ref(k)
            inputs.append(node)
            return Ref(len(inputs) - 1)
        if isinstance(value, list | tuple):
            return type(value)(self.templatize(v, inputs) for v in value)
        if isinstance(value, dict):
            return {k: self.templatize(v, inputs) for k, v in value.items()}
        return value

    def _where(self, msg: str) -> str:
        n = self.current
        if n is None:
            return msg
        loc = _source_of(n)
        scope = _scope_of(n)
        return (
            f"while capturing {n.target} ({n.name}){' in module ' + repr(scope) if scope else ''}"
            + (f" at {loc}" if loc else "")
            + f": {msg}"
        )

    # ------------------------------------------------------------------ nodes
    def add(self, fx_node: torch.fx.Node, spec: Spec) -> Node:
        inputs = [self.materialize(x) for x in spec.inputs]
        attrs = {k: self.templatize(v, inputs) for k, v in spec.attrs.items()}
        meta_val = fx_node.meta.get("val")
        if spec.first_of_tuple and isinstance(meta_val, list | tuple):
            meta_val = meta_val[0]
        return self.graph.add_node(
            spec.op,
            inputs,
            attrs=attrs,
            params=spec.params,
            meta=_meta(meta_val, self.src.batch_symbols),
            scope=_scope_of(fx_node),
            source=_source_of(fx_node),
        )

    def call(self, fx_node: torch.fx.Node) -> Any:
        target = fx_node.target
        if target is operator.getitem:
            return self.getitem(fx_node)
        if isinstance(target, torch._ops.OpOverload):
            name = str(target)
            if name.startswith(_SKIPPED_PREFIXES):
                return None
            if name in ("aten.sym_size.int", "aten.sym_size.default"):
                x = self.materialize(self.value(fx_node.args[0]))
                return self.graph.add_node(Op.SIZE, [x], attrs={"dim": fx_node.args[1]}, scope=_scope_of(fx_node))
            return self.aten(fx_node, name)
        if callable(target) and getattr(target, "__module__", None) in (
            "_operator",
            "operator",
            "math",
            "builtins",
        ):
            module = {"_operator": "operator"}.get(target.__module__, target.__module__)
            spec = Spec(Op.SCALAR, attrs={"fn": f"{module}.{target.__name__}", "args": self.value(fx_node.args)})
            return self.add(fx_node, spec)
        if callable(target) and getattr(target, "__name__", "") in (
            "sym_float",
            "sym_int",
            "sym_max",
            "sym_min",
        ):
            spec = Spec(Op.SCALAR, attrs={"fn": f"torch.{target.__name__}", "args": self.value(fx_node.args)})
            return self.add(fx_node, spec)
        raise CaptureError(self._where(f"the call {target!r} is not an ATen operator and cannot be captured"))

    def aten(self, fx_node: torch.fx.Node, name: str) -> Any:
        target = fx_node.target
        args = self.value(fx_node.args)
        kwargs = self.value(dict(fx_node.kwargs))
        meta_val = fx_node.meta.get("val")
        call = Call(name, _bind(target, args, kwargs), isinstance(meta_val, list | tuple))
        converter = converter_for(name)
        spec = None
        if converter is not None:
            try:
                spec = converter(call)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                log.warning(
                    "internal error mapping %s (%r); it is kept as a float op. Please report this.",
                    self._where(name),
                    exc,
                )
        in_place = _mutates_first(target)
        first_arg = fx_node.args[0] if fx_node.args else None
        if (
            spec is not None
            and in_place
            and spec.op is not Op.DROPOUT
            and (not isinstance(first_arg, torch.fx.Node) or _returns_view(first_arg) or first_arg.op == "placeholder")
        ):
            spec = None  # mutating a view or a parameter in place: keep the exact in-place call
        if spec is None:
            spec = Spec(Op.ATEN, attrs={"target": name, "args": list(args), "kwargs": kwargs})
            if _mutates_any(target):
                spec.attrs["mutates"] = True
        node = self.add(fx_node, spec)
        if spec.first_of_tuple:
            self.tuple_firsts.add(id(node))
        if in_place and isinstance(first_arg, torch.fx.Node) and isinstance(self.env.get(first_arg), Node):
            self.env[first_arg] = node  # later readers of the mutated tensor read the result
        return node

    def getitem(self, fx_node: torch.fx.Node) -> Any:
        base, index = fx_node.args
        value = self.value(base)
        if isinstance(value, list | tuple):
            return value[index]
        if isinstance(value, Node) and id(value) in self.tuple_firsts:
            if index == 0:
                return value
            if fx_node.users:
                raise CaptureError(self._where(f"element {index} of {value.op.value} is used; only 0 is kept"))
            return None
        node = self.materialize(value)
        return self.graph.add_node(
            Op.GETITEM,
            [node],
            attrs={"index": index},
            meta=_meta(fx_node.meta.get("val"), self.src.batch_symbols),
            scope=node.scope,
        )

    # ------------------------------------------------------------------ driver
    def run(self) -> Graph:
        src = self.src
        user_inputs = {name: k for k, name in enumerate(src.user_inputs)}
        placeholders = {n.name: n for n in src.graph.nodes if n.op == "placeholder"}
        for name in src.user_inputs:
            fx_node = placeholders[name]
            self.env[fx_node] = self.graph.add_node(Op.INPUT, meta=_meta(fx_node.meta.get("val"), src.batch_symbols))
        for fx_node in src.graph.nodes:
            self.current = fx_node
            if fx_node.op == "placeholder":
                if fx_node.name in src.param_of:
                    self.env[fx_node] = Param(src.param_of[fx_node.name])
                elif fx_node.name not in user_inputs:
                    self.env[fx_node] = None  # an input export kept as a constant
            elif fx_node.op == "call_function":
                self.env[fx_node] = self.call(fx_node)
            elif fx_node.op == "output":
                pass
            else:
                raise CaptureError(self._where(f"unsupported fx node kind {fx_node.op!r}"))
        self.current = None
        outs = []
        for v in src.output_values:
            value = self.value(v)
            outs.append(self.materialize(value) if isinstance(value, Node | Param) else value)
        refs: list[Node] = []

        def out_ref(r: Ref) -> Any:
            value = outs[r.index]
            if isinstance(value, Node):
                refs.append(value)
                return Ref(len(refs) - 1)
            return value

        self.graph.output = map_refs(src.output, out_ref)
        self.graph.output_nodes = refs
        self.graph.renumber()
        return self.graph


def import_fx(src: FxSource) -> Graph:
    """Build our Graph from an fx graph of ATen calls."""
    return _Importer(src).run()

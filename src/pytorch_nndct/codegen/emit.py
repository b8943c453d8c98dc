"""Turn a Graph into the source of a plain PyTorch module (SPEC 4), one emitter per op.

An emitter returns the submodule the op needs (`self.module_<k> = ...`, or None for inline Python such
as `x.size(0)`), the expression that computes the node's value, and which of the node's parameters the
submodule holds under which attribute. Output is deterministic: the same graph gives the same text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._tables import registrar
from ..ir.aten_map import TorchConst
from ..ir.graph import Graph, Node, Ref, refs_in
from ..ir.ops import CONV_OPS, TRANSPOSED_CONV_OPS, Op
from .names import class_name

__all__ = ["EMITTERS", "Emission", "generate_source", "module_state"]

_INFIX = {
    "operator.add": "+",
    "operator.sub": "-",
    "operator.mul": "*",
    "operator.truediv": "/",
    "operator.floordiv": "//",
    "operator.mod": "%",
    "operator.pow": "**",
}


@dataclass
class Emission:
    init: str | None  # constructor expression of the submodule, or None for inline code
    call: str  # expression computing the value; "{m}" stands for the submodule
    params: dict[str, str] = field(default_factory=dict)  # submodule attribute -> param role


@dataclass
class _Ctx:
    graph: Graph
    names: dict[int, str]  # id(node) -> variable name
    device: str
    input_exprs: dict[int, str] = field(default_factory=dict)  # id(INPUT node) -> "x['a'][0]"

    def lit(self, value: Any, node: Node | None = None) -> str:
        if isinstance(value, Ref):
            assert node is not None
            return self.names[id(node.inputs[value.index])]
        if isinstance(value, TorchConst):
            return self.device if value.expr == "device" else value.expr
        if isinstance(value, bool) or value is None or isinstance(value, int | str):
            return repr(value)
        if isinstance(value, float):
            if math.isnan(value):
                return "float('nan')"
            if math.isinf(value):
                return "float('inf')" if value > 0 else "float('-inf')"
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(self.lit(v, node) for v in value) + "]"
        if isinstance(value, tuple):
            inner = ", ".join(self.lit(v, node) for v in value)
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k!r}: {self.lit(v, node)}" for k, v in value.items()) + "}"
        raise TypeError(f"cannot write the value {value!r} of {node.where() if node else 'the graph'} as Python")

    def var(self, node: Node) -> str:
        return self.names[id(node)]

    def kwargs(self, node: Node, keys: list[str] | None = None) -> str:
        items = keys if keys is not None else list(node.opdef.attrs)
        return ", ".join(f"{k}={self.lit(node.attrs[k], node)}" for k in items)


Emitter = Callable[[Node, _Ctx], Emission]
EMITTERS: dict[Op, Emitter] = {}


emits = registrar(EMITTERS)


def _args(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


@emits(Op.INPUT)
def _input(node: Node, ctx: _Ctx) -> Emission:
    return Emission("nndct_nn.Input()", "{m}(" + ctx.input_exprs[id(node)] + ")")


@emits(Op.CONST)
def _const(node: Node, ctx: _Ctx) -> Emission:
    t = ctx.graph.param(node, "value")
    dtype = str(t.dtype).removeprefix("torch.")
    return Emission(f"nndct_nn.Const({list(t.shape)}, {dtype!r})", "{m}()", {"value": "value"})


@emits(Op.GETITEM)
def _getitem(node: Node, ctx: _Ctx) -> Emission:
    return Emission(None, f"{ctx.var(node.inputs[0])}[{node.attrs['index']!r}]")


@emits(Op.SIZE)
def _size(node: Node, ctx: _Ctx) -> Emission:
    return Emission(None, f"{ctx.var(node.inputs[0])}.size({node.attrs['dim']!r})")


@emits(Op.SCALAR)
def _scalar(node: Node, ctx: _Ctx) -> Emission:
    fn, args = node.attrs["fn"], [ctx.lit(a, node) for a in node.attrs["args"]]
    if fn in _INFIX and len(args) == 2:
        return Emission(None, f"{args[0]} {_INFIX[fn]} {args[1]}")
    if fn == "operator.neg":
        return Emission(None, f"-{args[0]}")
    return Emission(None, f"nndct_nn.call_function({fn!r}, {', '.join(args)})")


_CONV_CLASS = {
    Op.CONV1D: "Conv1d",
    Op.CONV2D: "Conv2d",
    Op.CONV3D: "Conv3d",
    Op.CONV_TRANSPOSE1D: "ConvTranspose1d",
    Op.CONV_TRANSPOSE2D: "ConvTranspose2d",
    Op.CONV_TRANSPOSE3D: "ConvTranspose3d",
}


def _weighted(roles: tuple[str, ...], node: Node) -> dict[str, str]:
    return {r: r for r in roles if r in node.params}


@emits(*CONV_OPS)
def _conv(node: Node, ctx: _Ctx) -> Emission:
    w = ctx.graph.param(node, "weight")
    a = node.attrs
    groups = a["groups"]
    if node.op in TRANSPOSED_CONV_OPS:
        cin, cout = w.shape[0], w.shape[1] * groups
        extra = f", output_padding={ctx.lit(a['output_padding'])}"
    else:
        cin, cout = w.shape[1] * groups, w.shape[0]
        extra = ""
    init = (
        f"nndct_nn.{_CONV_CLASS[node.op]}(in_channels={cin}, out_channels={cout}, "
        f"kernel_size={ctx.lit(list(w.shape[2:]))}, stride={ctx.lit(a['stride'])}, "
        f"padding={ctx.lit(a['padding'])}{extra}, dilation={ctx.lit(a['dilation'])}, groups={groups}, "
        f"bias={'bias' in node.params})"
    )
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight", "bias"), node))


@emits(Op.LINEAR)
def _linear(node: Node, ctx: _Ctx) -> Emission:
    w = ctx.graph.param(node, "weight")
    init = f"nndct_nn.Linear(in_features={w.shape[1]}, out_features={w.shape[0]}, bias={'bias' in node.params})"
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight", "bias"), node))


@emits(Op.EMBEDDING)
def _embedding(node: Node, ctx: _Ctx) -> Emission:
    w = ctx.graph.param(node, "weight")
    pad = node.attrs["padding_idx"]
    init = f"nndct_nn.Embedding(num_embeddings={w.shape[0]}, embedding_dim={w.shape[1]}, padding_idx={pad!r})"
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight",), node))


@emits(Op.BATCH_NORM)
def _batch_norm(node: Node, ctx: _Ctx) -> Emission:
    n = ctx.graph.param(node, "running_mean").numel()
    affine = "weight" in node.params and "bias" in node.params
    init = f"nndct_nn.BatchNorm(num_features={n}, eps={node.attrs['eps']!r}, affine={affine})"
    roles = ("weight", "bias", "running_mean", "running_var") if affine else ("running_mean", "running_var")
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(roles, node))


@emits(Op.CHANNEL_SCALE)
def _channel_scale(node: Node, ctx: _Ctx) -> Emission:
    n = ctx.graph.param(node, "weight").numel()
    init = f"nndct_nn.ChannelScale(num_features={n}, dim={node.attrs['dim']})"
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight", "bias"), node))


@emits(Op.LAYER_NORM)
def _layer_norm(node: Node, ctx: _Ctx) -> Emission:
    affine = "weight" in node.params
    bias = "bias" in node.params
    init = (
        f"nndct_nn.LayerNorm(normalized_shape={ctx.lit(node.attrs['normalized_shape'])}, "
        f"eps={node.attrs['eps']!r}, elementwise_affine={affine}, bias={bias})"
    )
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight", "bias"), node))


@emits(Op.GROUP_NORM)
def _group_norm(node: Node, ctx: _Ctx) -> Emission:
    channels = node.meta.shape[1] if node.meta is not None else ctx.graph.param(node, "weight").numel()
    affine = "weight" in node.params
    init = (
        f"nndct_nn.GroupNorm(num_groups={node.attrs['num_groups']}, num_channels={channels}, "
        f"eps={node.attrs['eps']!r}, affine={affine})"
    )
    return Emission(init, f"{{m}}({ctx.var(node.inputs[0])})", _weighted(("weight", "bias"), node))


@emits(Op.ADD, Op.SUB, Op.MUL, Op.DIV)
def _binary(node: Node, ctx: _Ctx) -> Emission:
    a = node.attrs
    operands = [ctx.var(i) for i in node.inputs]
    if a["other"] is not None:
        operands.append(ctx.lit(a["other"], node))
    extra = []
    if a.get("alpha", 1) != 1:
        extra.append(f"alpha={ctx.lit(a['alpha'])}")
    if a.get("rounding_mode") is not None:
        extra.append(f"rounding_mode={a['rounding_mode']!r}")
    return Emission(f"nndct_nn.Module({node.op.value!r})", "{m}(" + _args(*operands, *extra) + ")")


@emits(Op.CAT)
def _cat(node: Node, ctx: _Ctx) -> Emission:
    tensors = "[" + ", ".join(ctx.var(i) for i in node.inputs) + "]"
    return Emission("nndct_nn.Module('cat')", f"{{m}}({tensors}, dim={node.attrs['dim']!r})")


@emits(Op.ATEN, Op.CUSTOM)
def _aten(node: Node, ctx: _Ctx) -> Emission:
    args = [ctx.lit(a, node) for a in node.attrs["args"]]
    kwargs = [f"{k}={ctx.lit(v, node)}" for k, v in node.attrs["kwargs"].items()]
    return Emission(f"nndct_nn.Aten({node.attrs['target']!r})", "{m}(" + _args(*args, *kwargs) + ")")


def _functional(node: Node, ctx: _Ctx) -> Emission:
    in_attrs = {r.index for r in refs_in(node.attrs)}
    operands = ", ".join(ctx.var(i) for k, i in enumerate(node.inputs) if k not in in_attrs)
    return Emission(f"nndct_nn.Module({node.op.value!r})", "{m}(" + _args(operands, ctx.kwargs(node)) + ")")


for _op in Op:
    EMITTERS.setdefault(_op, _functional)


def _input_exprs(graph: Graph) -> dict[int, str]:
    out: dict[int, str] = {}

    def walk(value: Any, expr: str) -> None:
        if isinstance(value, Ref):
            out[id(graph.inputs[value.index])] = expr
        elif isinstance(value, list | tuple):
            for k, v in enumerate(value):
                walk(v, f"{expr}[{k}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{expr}[{k!r}]")

    for spec in graph.input_specs:
        walk(spec.template, spec.name)
    return out


def _emit_all(graph: Graph) -> tuple[_Ctx, list[tuple[Node, Emission]]]:
    names = {id(n): f"out_{k}" for k, n in enumerate(graph.nodes)}
    device = f"{names[id(graph.inputs[0])]}.device" if graph.inputs else "'cpu'"
    ctx = _Ctx(graph, names, device, _input_exprs(graph))
    return ctx, [(n, EMITTERS[n.op](n, ctx)) for n in graph.nodes]


def module_state(graph: Graph) -> dict[str, Any]:
    """The generated module's state dict, built from the graph's parameters."""
    _, emissions = _emit_all(graph)
    state = {}
    for k, (node, em) in enumerate(emissions):
        for attr, role in em.params.items():
            state[f"module_{k}.{attr}"] = graph.params[node.params[role]].detach().clone()
    return state


_VAR = re.compile(r"\bout_\d+\b")


def _forward_lines(statements: list[tuple[str, str]], output: str) -> list[str]:
    """`name = call` lines, each followed by a `del` of the values it read for the last time, so the
    forward holds only the activations still needed (as the float model's own forward does) rather than
    every intermediate until it returns."""
    last_use: dict[str, int] = {}
    for k, (name, call) in enumerate(statements):
        for var in _VAR.findall(call):
            last_use[var] = k
        last_use.setdefault(name, k)  # a value nothing reads is dropped right away
    kept = set(_VAR.findall(output))
    dead: dict[int, list[str]] = {}
    for var, k in last_use.items():
        if var not in kept:
            dead.setdefault(k, []).append(var)
    lines = []
    for k, (name, call) in enumerate(statements):
        lines.append(f"        {name} = {call}")
        if k in dead:
            lines.append(f"        del {', '.join(sorted(dead[k], key=lambda v: int(v[4:])))}")
    return lines


def generate_source(graph: Graph, version: str) -> str:
    """The full text of `<ModelClass>.py` for this graph."""
    cls = class_name(graph.name)
    ctx, emissions = _emit_all(graph)
    init_lines, statements = [], []
    for k, (node, em) in enumerate(emissions):
        where = f"  # {graph.name}::{node.name}" + (f" ({node.scope})" if node.scope else "")
        if em.init is not None:
            init_lines.append(f"        self.module_{k} = {em.init}{where}")
            call = em.call.replace("{m}", f"self.module_{k}")
            statements.append((ctx.names[id(node)], call))
        else:
            statements.append((ctx.names[id(node)], em.call))
    out = ctx.lit(graph.output, _OutputView(graph, ctx))
    fwd_lines = _forward_lines(statements, out)
    params = ", ".join(["self", *(s.name for s in graph.input_specs)])
    lines = [
        f'"""{cls}: generated by pytorch_nndct {version} from the float model {graph.name}.',
        "",
        "Do not edit by hand; parameters are loaded from the .pth file beside this one",
        '(pytorch_nndct.load_module does both)."""',
        "",
        "import torch",
        "",
        "import pytorch_nndct.nn as nndct_nn",
        "",
        "",
        f"class {cls}(torch.nn.Module):",
        "    def __init__(self):",
        "        super().__init__()",
        *init_lines,
        "",
        f"    def forward({params}):",
        *fwd_lines,
        f"        return {out}",
        "",
    ]
    return "\n".join(lines)


class _OutputView(Node):
    """Lets `_Ctx.lit` resolve Refs of the output template to the output nodes' variables."""

    def __init__(self, graph: Graph, ctx: _Ctx) -> None:
        super().__init__(name="<output>", op=Op.IDENTITY, inputs=list(graph.output_nodes))

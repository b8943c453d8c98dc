"""The quant plan (SPEC 2.2): which tensors get a quantization point, and which share one.

- Every weight and bias of conv / linear / channel-scale / batch-norm, and every constant tensor, gets a
  parameter point.
- Network inputs get an input point.
- A quantized op starts a group; an activation- or layout-like op joins the group when it is the only
  reader of the group's end, and the point sits at the group's end (conv -> relu: one point, after relu).
- A group whose only reader is a concat gets no point of its own: it uses the concat's.
- Softmax, GELU, layer-norm and group-norm are computed in float on their quantized input and their output
  is quantized (the original's `quant_input_output`).
- Other float ops (sigmoid, unknown ATen ops) are not quantized; their output gets a point where it feeds a
  quantized op.
- Attention masks and other large constants, and the data they are applied to, stay off the 8-bit grids
  (quant/masks.py): computed in float, no point.
- Hardware-aware quantization (VAIQ35 1.3): `float_nodes` names nodes the target cannot run; they are planned
  as float ops whatever their op (no parameter points, no group), with the reason given.

Each point's format comes from the strategy config: a parameter's from its node, an output point's from the
nodes of its group (a rule naming any of them applies), a network input's from the input and the layers
reading it. Points whose datatype is a float type round to it; float32 points leave values as they are.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import CONV_OPS, Op
from .config import QuantConfig
from .layers import LayerRef, any_match, scope_path
from .masks import off_grid
from .spec import CalibSpec, QuantSpec, TensorKind

__all__ = [
    "QUANT_ROLE",
    "ParamPoint",
    "QuantPlan",
    "Role",
    "graph_md5",
    "layer_refs",
    "make_plan",
    "split_float_reads_",
]

log = logging.getLogger("pytorch_nndct")


class Role(enum.Enum):
    QUANTIZED = "quantized"  # runs on the DPU; its output gets its own point (at the end of its group)
    FLOAT_IO = "float_io"  # computed in float on its quantized input; its output gets its own point
    FUSIBLE = "fusible"  # activation-like: joins its producer's group
    LAYOUT = "layout"  # moves values only: joins its producer's group, or keeps its input's point
    FLOAT = "float"  # runs in float; quantized only where it feeds a quantized op
    STRUCTURE = "structure"  # not a tensor op (sizes, tuple access)


_Q, _F, _L, _FL, _S = Role.QUANTIZED, Role.FUSIBLE, Role.LAYOUT, Role.FLOAT, Role.STRUCTURE
_IO = Role.FLOAT_IO
QUANT_ROLE: dict[Op, Role] = {
    Op.INPUT: _Q,
    Op.CONST: _Q,
    Op.GETITEM: _S,
    Op.SIZE: _S,
    Op.SCALAR: _S,
    **{op: _Q for op in CONV_OPS},
    Op.LINEAR: _Q,
    Op.EMBEDDING: _Q,
    Op.BATCH_NORM: _Q,
    Op.CHANNEL_SCALE: _Q,
    Op.LAYER_NORM: _IO,
    Op.GROUP_NORM: _IO,
    Op.RELU: _F,
    Op.RELU6: _F,
    Op.HARDTANH: _F,
    Op.LEAKY_RELU: _F,
    Op.SIGMOID: _FL,
    Op.TANH: _FL,
    Op.SILU: _FL,
    Op.GELU: _IO,
    Op.HARDSIGMOID: _Q,
    Op.HARDSWISH: _Q,
    Op.SOFTMAX: _IO,
    Op.ADD: _Q,
    Op.SUB: _Q,
    Op.MUL: _Q,
    Op.DIV: _FL,
    Op.MATMUL: _Q,
    Op.MEAN: _Q,
    Op.MAX_POOL2D: _Q,
    Op.AVG_POOL2D: _Q,
    Op.ADAPTIVE_AVG_POOL2D: _Q,
    Op.INTERPOLATE: _Q,
    Op.PAD: _Q,
    Op.CAT: _Q,
    Op.FLATTEN: _L,
    Op.RESHAPE: _L,
    Op.PERMUTE: _L,
    Op.TRANSPOSE: _L,
    Op.CONTIGUOUS: _L,
    Op.UNSQUEEZE: _L,
    Op.SQUEEZE: _L,
    Op.SLICE: _L,
    Op.SELECT: _L,
    Op.CHUNK: _L,
    Op.SPLIT: _L,
    Op.EXPAND: _L,
    Op.PIXEL_SHUFFLE: _L,
    Op.DROPOUT: _L,
    Op.IDENTITY: _L,
    Op.ATEN: _FL,
    Op.CUSTOM: _FL,  # quantized when its op_type is in custom_quant_ops
}

# parameter roles that are quantized, and as what
_PARAM_KINDS = {"weight": TensorKind.WEIGHT, "bias": TensorKind.BIAS, "value": TensorKind.WEIGHT}
_PARAM_OPS = frozenset({*CONV_OPS, Op.LINEAR, Op.EMBEDDING, Op.CHANNEL_SCALE, Op.CONST})


@dataclass(frozen=True)
class ParamPoint:
    node: str
    role: str
    key: str  # the parameter's state-dict name
    spec: QuantSpec
    calib: CalibSpec = field(default_factory=CalibSpec)


@dataclass
class QuantPlan:
    """Where the quantization points are, keyed by stable names (SPEC 3.1)."""

    params: list[ParamPoint] = field(default_factory=list)
    outputs: dict[str, QuantSpec] = field(default_factory=dict)  # node name -> spec of the point on its output
    tensor_point: dict[str, str] = field(default_factory=dict)  # node name -> key whose fp its output uses
    input_points: set[str] = field(default_factory=set)  # output keys that are network inputs (maxmin)
    float_ops: dict[str, str] = field(default_factory=dict)  # node name -> why it runs in float
    calibs: dict[str, CalibSpec] = field(default_factory=dict)  # output key -> how its fix position is found
    change_concat_input_fix: bool = False  # export: concat inputs take the concat's fix position
    change_pool_input_fix: bool = False  # export: pooling inputs take the pooling output's fix position
    only_int: bool = True  # every point is an integer grid (fix positions are adjusted at export)
    onnx_opset_version: int | None = None  # the config's: the ONNX export's default opset


def _is_float_tensor(node: Node) -> bool:
    return isinstance(node.meta, TensorMeta) and node.meta.dtype in ("float32", "float16", "bfloat16", "float64")


def _is_output(graph: Graph, node: Node) -> bool:
    return any(n is node for n in graph.output_nodes)


def make_plan(
    graph: Graph,
    bitwidth_w: int = 8,
    bitwidth_a: int = 8,
    config: QuantConfig | None = None,
    module_types: dict[str, type] | None = None,
    custom_quant_ops: frozenset[str] | set[str] = frozenset(),
    float_nodes: Mapping[str, str] | None = None,
) -> QuantPlan:
    """Plan the quantization points of an optimized graph.

    `config` (default: the original's defaults at the given bit widths) sets each tensor's format and
    calibration; its per-layer rules match node scopes, and module types through `module_types`
    (scope -> the float model's module class). Custom ops (register_custom_op) run in float; those whose
    op_type is in `custom_quant_ops` get their output quantized. `float_nodes` (node name -> why) are planned
    as float ops: the ops a target cannot run (`pytorch_nndct.targets.cpu_ops`).
    """
    config = config or QuantConfig.default(bitwidth_w, bitwidth_a)
    forced = dict(float_nodes or {})
    masks = off_grid(graph)
    sums = _float_sums(graph)
    unpointed = {**masks.large, **masks.masked, **sums}  # float, and read in float
    for name, why in unpointed.items():
        forced.setdefault(name, why)
    for name in _float_read(graph, sums):  # its quantized readers read it through their own point
        forced.setdefault(name, "computed in float; its float readers read it in float, the others quantized")

    def role_of(node: Node) -> Role:
        if node.name in forced and QUANT_ROLE[node.op] is not Role.STRUCTURE:
            return Role.FLOAT
        if node.op is Op.CUSTOM and node.attrs["op_type"] in custom_quant_ops:
            return Role.QUANTIZED
        return QUANT_ROLE[node.op]

    plan = QuantPlan(change_concat_input_fix=config.change_concat_input_fix,
                     change_pool_input_fix=config.change_pool_input_fix, only_int=config.only_int,
                     onnx_opset_version=config.onnx_opset_version)  # fmt: skip
    refs = layer_refs(graph, module_types or {})

    def setting(kind: TensorKind, nodes: list[Node]):
        return config.tensor(kind, refs=[refs[n.name] for n in nodes])

    for node in graph.nodes:
        if node.op in _PARAM_OPS and role_of(node) is not Role.FLOAT:
            for role, key in node.params.items():
                kind = _PARAM_KINDS.get(role)
                if kind is not None and graph.params[key].is_floating_point():
                    t = setting(kind, [node])
                    plan.params.append(ParamPoint(node.name, role, key, t.spec(), t.calib))

    def add_point(name: str, kind: TensorKind, node: Node) -> None:
        if kind is TensorKind.INPUT:  # a network input: the layers reading it may set its format
            nodes = [node, *node.users]
        else:  # an output point: any node of its group
            nodes, end = [node], node
            while end.name != name and len(end.users) == 1:
                end = end.users[0]
                nodes.append(end)
        t = setting(kind, nodes)
        plan.outputs[name] = t.spec()
        plan.calibs[name] = t.calib

    def group_end(node: Node) -> Node:
        end = node
        while len(end.users) == 1 and not _is_output(graph, end):
            nxt = end.users[0]
            if role_of(nxt) not in (Role.FUSIBLE, Role.LAYOUT) or nxt.inputs[0] is not end:
                break
            end = nxt
        return end

    grouped: dict[str, str] = {}  # node name -> its group's end node name
    for node in graph.nodes:
        role = role_of(node)
        if node.name in grouped:
            continue
        if role in (Role.QUANTIZED, Role.FLOAT_IO) and _is_float_tensor(node):
            end = group_end(node)
            members = [node]
            while members[-1] is not end:
                members.append(members[-1].users[0])
            for m in members:
                grouped[m.name] = end.name
            if node.op is Op.CONST:
                plan.tensor_point.update({m.name: node.params["value"] for m in members})
                continue
            add_point(end.name, TensorKind.INPUT if node.op is Op.INPUT else TensorKind.ACTIVATION, node)
            if node.op is Op.INPUT:
                plan.input_points.add(end.name)
            plan.tensor_point.update({m.name: end.name for m in members})
        elif role in (Role.LAYOUT, Role.STRUCTURE) and node.inputs and node.inputs[0].name in plan.tensor_point:
            plan.tensor_point[node.name] = plan.tensor_point[node.inputs[0].name]  # same values, same grid
        elif role is Role.FUSIBLE and _is_float_tensor(node) and node.inputs[0].name in plan.tensor_point:
            add_point(node.name, TensorKind.ACTIVATION, node)  # an activation whose producer has other readers
            plan.tensor_point[node.name] = node.name
        elif role in (Role.FLOAT, Role.FUSIBLE) or (role is Role.QUANTIZED and not _is_float_tensor(node)):
            plan.float_ops[node.name] = forced.get(node.name) or _float_reason(node)

    # a group whose only reader is a concat uses the concat's point
    for cat in graph.find(Op.CAT):
        if role_of(cat) is Role.FLOAT:
            continue
        for src in cat.inputs:
            end = src.name
            if end in plan.outputs and len(src.users) == 1 and end not in plan.input_points:
                if not _is_output(graph, src):
                    del plan.outputs[end]
                    plan.calibs.pop(end, None)
                    shared = plan.tensor_point[cat.name]
                    for name, key in list(plan.tensor_point.items()):
                        if key == end:
                            plan.tensor_point[name] = shared

    # float outputs get a point where they feed a quantized op (masks and masked data stay float)
    for node in graph.nodes:
        if role_of(node) not in (Role.QUANTIZED, Role.FLOAT_IO) or node.op in (Op.INPUT, Op.CONST):
            continue
        for src in node.inputs:
            if src.name in unpointed or (role_of(src) is Role.STRUCTURE and src.op is not Op.GETITEM):
                continue  # sizes and tuples are not quantized; a tensor taken from a float op's tuple is
            if src.name not in plan.tensor_point and _is_float_tensor(src):
                add_point(src.name, TensorKind.ACTIVATION, src)
                plan.tensor_point[src.name] = src.name
    _warn_unmatched(config, list(refs.values()))
    return plan


_NORMS = frozenset({Op.LAYER_NORM, Op.GROUP_NORM})


def _float_sums(graph: Graph) -> dict[str, str]:
    """Additions read only by layer/group norms: computed in float with the norm (SPEC 2.7, doing better).

    The norm runs in float on the host anyway; an 8-bit grid on the sum in between cannot hold a transformer's
    residual stream (values of 0.1 to 1 beside outlier channels of 50 to 200), so the sum of the two quantized
    inputs goes to the norm exactly.
    """
    out = {}
    for node in graph.nodes:
        if node.op in (Op.ADD, Op.SUB) and node.users and all(u.op in _NORMS for u in node.users):
            if not _is_output(graph, node):
                out[node.name] = "a residual sum read only by a float layer/group norm: computed in float with it"
    return out


def _float_read(graph: Graph, sums: Mapping[str, str]) -> list[str]:
    """Float-computed ops (norms, softmax, GELU) with a reader computed in float (a residual sum)."""
    io = [n for n in graph.nodes if QUANT_ROLE[n.op] is Role.FLOAT_IO]
    return [n.name for n in io if any(u.name in sums for u in n.users)]


def split_float_reads_(graph: Graph) -> bool:
    """Give the quantized readers of a float op that a float sum also reads their own copy of its output.

    A layer norm's output feeds the next attention's linears (quantized: they run on the DPU) and the next
    residual sum (float, on the host with the norm). One point on the norm's output would make the sum read
    8-bit values it has no use for; an identity in front of the quantized readers carries the point instead
    (the .xmodel writes it as the `fix` that feeds the DPU). Run before make_plan; names are renumbered.
    """
    changed = False
    sums = _float_sums(graph)
    for name in _float_read(graph, sums):
        node = graph.node(name)
        others = [u for u in node.users if u.name not in sums]
        if not others:
            continue
        copy = graph.add_node(Op.IDENTITY, [node], meta=node.meta, scope=node.scope, source=node.source,
                              before=min(others, key=graph.nodes.index))  # fmt: skip
        for user in others:
            for k, src in enumerate(list(user.inputs)):
                if src is node:
                    graph.set_input(user, k, copy)
        changed = True
    if changed:
        graph.renumber()
    return changed


def layer_refs(graph: Graph, module_types: Mapping[str, type]) -> dict[str, LayerRef]:
    """What layer rules see of each node: name, op, module path, module class and the original's scope path."""
    refs = {}
    for n in graph.nodes:
        module_type = module_types.get(n.scope) if n.scope else None
        refs[n.name] = LayerRef(n.name, n.op, n.scope, module_type, scope_path(n.scope, module_types))
    return refs


def _warn_unmatched(config: QuantConfig, refs: list[LayerRef]) -> None:
    for rule in config.layers:
        if not any_match(refs, rule.layer_type, rule.layer_name):
            what = f"layer_type {rule.layer_type!r}" if rule.layer_type else f"layer_name {rule.layer_name!r}"
            log.warning("quant config: %s matches no layer of this model; the entry has no effect", what)


def _float_reason(node: Node) -> str:
    if node.op is Op.ATEN:
        return f"{node.attrs['target']} has no quantized equivalent"
    if node.op is Op.CUSTOM:
        return f"custom op {node.attrs['op_type']} runs in float (list it in custom_quant_ops to quantize its output)"
    if not _is_float_tensor(node):
        return "its output is not a float tensor"
    return f"{node.op.value} is computed in float on the DPU's host"


def graph_md5(graph: Graph) -> str:
    """md5 of the graph's topology (names, ops, edges, parameter names); values do not enter it."""
    h = hashlib.md5()
    for node in graph.nodes:
        inputs = ",".join(i.name for i in node.inputs)
        params = ",".join(f"{k}={v}" for k, v in sorted(node.params.items()))
        h.update(f"{node.name}:{node.op.value}({inputs};{params})\n".encode())
    return h.hexdigest()

"""More ATen lowerings (see onnx_aten): reductions, tensor creation, indexing, matrix products, layout, and
scaled_dot_product_attention written out as MatMul -> scale -> mask -> Softmax -> MatMul."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NndctError
from ..ir.ops import reduced_axes
from .onnx_aten import AtenCall, aten_lowers
from .onnx_builder import onnx_dtype
from .onnx_ops import dims, reduce

__all__: list[str] = []


# --------------------------------------------------------------------------- reductions
def _axes(c: AtenCall, arg: str = "dim") -> list[int] | None:
    dim = c.args.get(arg)
    if dim is None or dim == []:
        return None
    return reduced_axes(dim, c.rank("self"))


_REDUCE = {"sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin", "mean": "ReduceMean", "prod": "ReduceProd"}


@aten_lowers("aten.sum.dim_IntList", "aten.sum.default", "aten.amax.default", "aten.amin.default", "aten.mean.dim",
             "aten.mean.default", "aten.prod.default", "aten.max.default", "aten.min.default")  # fmt: skip
def _reduce(c: AtenCall) -> str:
    name = c.target.split(".")[1]
    op_type = _REDUCE.get(name, "ReduceMax" if name == "max" else "ReduceMin")
    return reduce(c.b, op_type, c.tensor("self", c.dtype), _axes(c), bool(c.args.get("keepdim")), c.name)


@aten_lowers("aten.max.dim", "aten.min.dim")
def _reduce_with_index(c: AtenCall) -> list[str]:
    """(values, indices), read through getitem."""
    name, axis, keep = c.target.split(".")[1], c["dim"] % c.rank("self"), bool(c["keepdim"])
    x = c.tensor("self")
    values = reduce(c.b, "ReduceMax" if name == "max" else "ReduceMin", x, [axis], keep, f"{c.name}_values")
    index = c.add("ArgMax" if name == "max" else "ArgMin", [x], "_indices", axis=axis, keepdims=int(keep))
    return [values, index]


@aten_lowers("aten.argmax.default", "aten.argmin.default")
def _arg(c: AtenCall) -> str:
    op_type, x = "ArgMax" if "argmax" in c.target else "ArgMin", c.tensor("self")
    if c["dim"] is None:
        x = c.add("Reshape", [x, c.b.ints("shape_flat", [-1])], "_flat")
        return c.add(op_type, [x], axis=0, keepdims=0)
    return c.add(op_type, [x], axis=c["dim"], keepdims=int(bool(c["keepdim"])))


@aten_lowers("aten.var.correction", "aten.std.correction", "aten.var.dim", "aten.std.dim")
def _var(c: AtenCall) -> str:
    shape, axes = c.source("self").meta.shape, _axes(c) or list(range(c.rank("self")))
    n = math.prod(shape[a] for a in axes) if all(isinstance(shape[a], int) for a in axes) else None
    if n is None:
        raise NndctError(f"{c.node.where()}: {c.target} over a symbolic dimension is not exported to ONNX yet")
    correction = c.args.get("correction")
    if correction is None:
        correction = 1 if c.args.get("unbiased", True) else 0
    x = c.tensor("self")
    d = c.add("Sub", [x, reduce(c.b, "ReduceMean", x, axes, True, f"{c.name}_mean")], "_centered")
    total = reduce(c.b, "ReduceSum", c.add("Mul", [d, d], "_sq"), axes, bool(c["keepdim"]), f"{c.name}_sum")
    var = c.add("Div", [total, c.b.init(f"{c.name}_n", np.array(max(n - correction, 0), np.float32))], "_var")
    return c.add("Sqrt", [var]) if ".std." in c.target or c.target.startswith("aten.std") else var


@aten_lowers("aten.linalg_vector_norm.default")
def _vector_norm(c: AtenCall) -> str:
    if c["ord"] != 2:
        raise NndctError(f"{c.node.where()}: vector norm of order {c['ord']} is not exported to ONNX yet")
    x = c.tensor("self", c.dtype)
    total = reduce(c.b, "ReduceSum", c.add("Mul", [x, x], "_sq"), _axes(c), bool(c["keepdim"]), f"{c.name}_sum")
    return c.add("Sqrt", [total])


@aten_lowers("aten.cumsum.default")
def _cumsum(c: AtenCall) -> str:
    axis = c.b.init(f"{c.name}_axis", np.array(c["dim"], np.int64))
    return c.add("CumSum", [c.tensor("self", c.dtype), axis])


# --------------------------------------------------------------------------- creation
def _filled(c: AtenCall, shape: str, value: float | int | bool) -> str:
    tensor = c.b.helper.make_tensor(f"{c.name}_value", onnx_dtype(c.dtype), [1], [value])
    return c.add("ConstantOfShape", [shape], value=tensor)


_FILL = {"zeros": 0, "ones": 1, "empty": 0}


@aten_lowers(*(f"aten.{p}{n}.default" for p in ("", "new_") for n in ("zeros", "ones", "full")),
             "aten.new_empty.default", "aten.empty.memory_format")  # fmt: skip
def _new_filled(c: AtenCall) -> str:
    name = c.target.split(".")[1].removeprefix("new_")
    return _filled(c, c.tensor("size"), c["fill_value"] if name == "full" else _FILL[name])


@aten_lowers(*(f"aten.{n}_like.default" for n in ("zeros", "ones", "empty", "full")))
def _like(c: AtenCall) -> str:
    name = c.target.split(".")[1].removesuffix("_like")
    shape = c.add("Shape", [c.tensor("self")], "_shape")
    return _filled(c, shape, c["fill_value"] if name == "full" else _FILL[name])


@aten_lowers("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(c: AtenCall) -> str:
    start = c.tensor("start", c.dtype) if "start" in c.args else c.b.init(f"{c.name}_0", np.array(0, c.dtype))
    step = c.tensor("step", c.dtype) if "step" in c.args else c.b.init(f"{c.name}_1", np.array(1, c.dtype))
    return c.add("Range", [start, c.tensor("end", c.dtype), step])


@aten_lowers("aten.scalar_tensor.default")
def _scalar_tensor(c: AtenCall) -> str:
    return c.add("Identity", [c.tensor("s", c.dtype)])


# --------------------------------------------------------------------------- indexing
@aten_lowers("aten.embedding.default")
def _embedding(c: AtenCall) -> str:
    return c.add("Gather", [c.tensor("weight"), c.tensor("indices", "int64")], axis=0)


@aten_lowers("aten.index_select.default")
def _index_select(c: AtenCall) -> str:
    return c.add("Gather", [c.tensor("self"), c.tensor("index", "int64")], axis=c["dim"])


@aten_lowers("aten.gather.default")
def _gather(c: AtenCall) -> str:
    return c.add("GatherElements", [c.tensor("self"), c.tensor("index", "int64")], axis=c["dim"])


@aten_lowers("aten.index.Tensor")
def _index(c: AtenCall) -> str:
    """x[i0, i1, ...] with integer index tensors on the leading dimensions (one of them: Gather on its axis)."""
    indices = c["indices"]
    used = [k for k, v in enumerate(indices) if v is not None]
    x = c.tensor("self")
    if any(c.node.inputs[indices[k].index].meta.dtype == "bool" for k in used):
        raise NndctError(f"{c.node.where()}: indexing with a boolean mask is not exported to ONNX")
    sources = [c.node.inputs[indices[k].index] for k in used]
    values = [c.b.value[s.name] for s in sources]
    values = [c.cast(v, s.meta.dtype, "int64", f"{c.name}_{k}") for k, (v, s) in enumerate(zip(values, sources))]
    if len(used) == 1:
        return c.add("Gather", [x, values[0]], axis=used[0])
    if used != list(range(len(used))):
        raise NndctError(f"{c.node.where()}: indexing on dimensions {used} is not exported to ONNX yet")
    zero = c.b.init("i64_0", np.array(0, np.int64))
    common = values[0]  # zeros of the broadcast shape of all the indices
    for k, v in enumerate(values):
        common = c.add("Add", [c.add("Mul", [common, zero], f"_z{k}"), c.add("Mul", [v, zero], f"_w{k}")], f"_b{k}")
    last = c.b.ints("axes_-1", [-1])
    stacked = [c.add("Unsqueeze", [c.add("Add", [v, common], f"_e{k}"), last], f"_u{k}") for k, v in enumerate(values)]
    return c.add("GatherND", [x, c.add("Concat", stacked, "_nd", axis=-1)])


# --------------------------------------------------------------------------- matrix products
@aten_lowers("aten.bmm.default", "aten.mm.default", "aten.matmul.default")
def _mm(c: AtenCall) -> str:
    second = "mat2" if "mat2" in c.args else "other"
    return c.add("MatMul", [c.tensor("self"), c.tensor(second)])


@aten_lowers("aten.einsum.default")
def _einsum(c: AtenCall) -> str:
    operands = [c.b.value[c.node.inputs[r.index].name] for r in c["tensors"]]
    return c.add("Einsum", operands, equation=c["equation"].replace(" ", ""))


@aten_lowers("aten.baddbmm.default", "aten.addmm.default", "aten.addbmm.default")
def _addmm(c: AtenCall) -> str:
    a, m = ("batch1", "batch2") if "batch1" in c.args else ("mat1", "mat2")
    product = c.add("MatMul", [c.tensor(a), c.tensor(m)], "_mm")
    if c.target == "aten.addbmm.default":
        product = reduce(c.b, "ReduceSum", product, [0], False, f"{c.name}_bsum")
    terms = []
    for arg, value in (("beta", c.tensor("self")), ("alpha", product)):
        k = c.b.init(f"{c.name}_{arg}_k", np.float32(c[arg]))
        terms.append(value if c[arg] == 1 else c.add("Mul", [value, k], f"_{arg}"))
    return c.add("Add", terms)


@aten_lowers("aten.linear.default")
def _linear(c: AtenCall) -> str:
    out = c.add("MatMul", [c.tensor("input"), c.add("Transpose", [c.tensor("weight")], "_wT", perm=[1, 0])], "_mm")
    return out if c["bias"] is None else c.add("Add", [out, c.tensor("bias")])


@aten_lowers("aten.t.default")
def _t(c: AtenCall) -> str:
    return c.add("Transpose", [c.tensor("self")], perm=[1, 0]) if c.rank("self") == 2 else c.add(
        "Identity", [c.tensor("self")])  # fmt: skip


# --------------------------------------------------------------------------- layout
@aten_lowers("aten.unflatten.int", "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
             "aten.view_as.default", "aten.reshape_as.default", "aten.flatten.using_ints")  # fmt: skip
def _reshape(c: AtenCall) -> str:
    shape = c.node.meta.shape
    if sum(not isinstance(d, int) for d in shape) > 1:
        raise NndctError(f"{c.node.where()}: a reshape to {shape} has more than one symbolic dimension")
    target = c.b.ints(f"{c.name}_shape", [d if isinstance(d, int) else -1 for d in shape])
    return c.add("Reshape", [c.tensor("self"), target])


@aten_lowers("aten.swapaxes.default", "aten.swapdims.default", "aten.transpose.int", "aten.permute.default")
def _transpose(c: AtenCall) -> str:
    rank = c.rank("self")
    if "dims" in c.args:
        perm = [d % rank for d in c["dims"]]
    else:
        a, b = (c[k] % rank for k in (("axis0", "axis1") if "axis0" in c.args else ("dim0", "dim1")))
        perm = list(range(rank))
        perm[a], perm[b] = b, a
    return c.add("Transpose", [c.tensor("self")], perm=perm)


@aten_lowers("aten.expand.default", "aten.expand_as.default")
def _expand(c: AtenCall) -> str:
    if "other" in c.args:
        return c.add("Expand", [c.tensor("self"), c.add("Shape", [c.tensor("other")], "_shape")])
    sizes = [1 if isinstance(v, int) and v == -1 else v for v in c["size"]]
    return c.add("Expand", [c.tensor("self"), dims(c.b, c.node, sizes, f"{c.name}_size")])


@aten_lowers("aten.repeat.default")
def _repeat(c: AtenCall) -> str:
    x, extra = c.tensor("self"), len(c["repeats"]) - c.rank("self")
    if extra > 0:
        x = c.add("Reshape", [x, c.b.ints(f"{c.name}_lead", [1] * extra + [0] * c.rank("self"))], "_lead")
    return c.add("Tile", [x, c.tensor("repeats")])


def _slice(c: AtenCall, x: str, axis: int, start: int, end: int, name: str, step: int = 1) -> str:
    b = c.b
    inputs = [x, b.ints(f"{name}_s", [start]), b.ints(f"{name}_e", [end]), b.ints(f"axis_{axis}", [axis])]
    return b.add("Slice", [*inputs, b.ints(f"step_{step}", [step])], name)


@aten_lowers("aten.roll.default")
def _roll(c: AtenCall) -> str:
    x, shape = c.tensor("self"), c.source("self").meta.shape
    shifts, axes = c["shifts"], c["dims"]
    if not axes:
        raise NndctError(f"{c.node.where()}: roll without dims (of the flattened tensor) is not exported to ONNX")
    for k, (shift, axis) in enumerate(zip(shifts, axes, strict=True)):
        n, axis = shape[axis], axis % len(shape)
        if not isinstance(n, int) or not isinstance(shift, int):
            raise NndctError(f"{c.node.where()}: roll along a symbolic dimension is not exported to ONNX yet")
        s = shift % n
        if s:
            head = _slice(c, x, axis, n - s, n, f"{c.name}_{k}_head")
            x = c.add("Concat", [head, _slice(c, x, axis, 0, n - s, f"{c.name}_{k}_tail")], f"_{k}", axis=axis)
    return c.add("Identity", [x])


@aten_lowers("aten.flip.default")
def _flip(c: AtenCall) -> str:
    x = c.tensor("self")
    for k, axis in enumerate(c["dims"]):
        x = _slice(c, x, axis % c.rank("self"), -1, -(2**62), f"{c.name}_{k}", -1)
    return c.add("Identity", [x])


@aten_lowers("aten.narrow.default")
def _narrow(c: AtenCall) -> str:
    start, length = c["start"], c["length"]
    return _slice(c, c.tensor("self"), c["dim"] % c.rank("self"), start, start + length, c.name)


@aten_lowers("aten.stack.default")
def _stack(c: AtenCall) -> str:
    first = c.node.inputs[c["tensors"][0].index]
    axis = c["dim"] % (len(first.meta.shape) + 1)
    axes = c.b.ints(f"{c.name}_axis", [axis])
    parts = [c.add("Unsqueeze", [c.b.value[c.node.inputs[r.index].name], axes], f"_{k}")
             for k, r in enumerate(c["tensors"])]  # fmt: skip
    return c.add("Concat", parts, axis=axis)


@aten_lowers("aten.split_with_sizes.default", "aten.split.sizes", "aten.unbind.int")
def _split(c: AtenCall) -> list[str]:
    x, axis = c.tensor("self"), c["dim"] % c.rank("self")
    if "unbind" in c.target:
        n = c.source("self").meta.shape[axis]
        sizes = [1] * n
    else:
        sizes = list(c["split_sizes"] if "split_sizes" in c.args else c["split_size"])
    outs = [f"{c.name}_{k}" for k in range(len(sizes))]
    c.b.nodes.append(c.b.helper.make_node("Split", [x, c.b.ints(f"{c.name}_sizes", sizes)], outs, name=c.name,
                                          axis=axis))  # fmt: skip
    if "unbind" in c.target:
        axes = c.b.ints(f"axes_{axis}", [axis])
        return [c.b.add("Squeeze", [o, axes], f"{o}_sq") for o in outs]
    return outs


@aten_lowers("aten.tril.default", "aten.triu.default")
def _tri(c: AtenCall) -> str:
    k = c.b.init(f"{c.name}_k", np.array(c["diagonal"], np.int64))
    return c.add("Trilu", [c.tensor("self"), k], upper=int("triu" in c.target))


@aten_lowers("aten.softmax.int", "aten._softmax.default", "aten.log_softmax.int", "aten._log_softmax.default")
def _softmax(c: AtenCall) -> str:
    op_type = "LogSoftmax" if "log_softmax" in c.target else "Softmax"
    return c.add(op_type, [c.tensor("self", c.dtype)], axis=c["dim"])


# --------------------------------------------------------------------------- attention
@aten_lowers("aten.scaled_dot_product_attention.default")
def _sdpa(c: AtenCall) -> str:
    """softmax(q k^T * scale + mask) v as torch's math path computes it: a boolean mask (or is_causal) puts
    -inf where it is False, a float mask is added."""
    if c["enable_gqa"] or c["dropout_p"]:
        raise NndctError(f"{c.node.where()}: attention with enable_gqa or dropout is not exported to ONNX yet")
    q_shape, rank = c.source("query").meta.shape, c.rank("key")
    scale = c["scale"] if c["scale"] is not None else 1.0 / math.sqrt(q_shape[-1])
    perm = [*range(rank - 2), rank - 1, rank - 2]
    k_t = c.add("Transpose", [c.tensor("key")], "_kT", perm=perm)
    scores = c.add("MatMul", [c.tensor("query"), k_t], "_qk")
    scores = c.add("Mul", [scores, c.b.init(f"{c.name}_scale", np.array(scale, np.float32))], "_scaled")
    if c["is_causal"] or c.dtype_of("attn_mask") == "bool":
        neg_inf = c.b.init("f32_-inf", np.array(-np.inf, np.float32))
    if c["is_causal"]:
        n_q, n_k = q_shape[-2], c.source("key").meta.shape[-2]
        if not isinstance(n_q, int) or not isinstance(n_k, int):
            raise NndctError(f"{c.node.where()}: causal attention over a symbolic length is not exported to ONNX")
        causal = c.b.init(f"{c.name}_tril", np.tril(np.ones((n_q, n_k), dtype=bool)))
        scores = c.add("Where", [causal, scores, neg_inf], "_causal")
    if c["attn_mask"] is not None:
        if c.dtype_of("attn_mask") == "bool":
            scores = c.add("Where", [c.tensor("attn_mask"), scores, neg_inf], "_masked")
        else:
            scores = c.add("Add", [scores, c.tensor("attn_mask", "float32")], "_masked")
    weights = c.add("Softmax", [scores], "_softmax", axis=-1)
    return c.add("MatMul", [weights, c.tensor("value")])

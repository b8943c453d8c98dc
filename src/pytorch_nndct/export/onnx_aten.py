"""ONNX lowerings of `Op.ATEN` nodes: float ops kept as raw ATen calls, by their qualified target name.

`ATEN_LOWERINGS` maps a target ('aten.erf.default') to a function of the builder, the node and its arguments
bound to the operator's schema (`AtenCall`); it returns the ONNX value of the result (or the list of values
of a tuple result, read through getitem). These ops carry no quantization point of their own: they are
written in their own data type (float32, int64, bool) with the casts torch's type promotion implies, and
`OnnxBuilder.emit` adds the plan's point where one reads them. A target with no entry is refused by name.
Constant subgraphs (masks and index tables built from sizes known at capture) never get here: onnx_fold
computes them at export time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._tables import registrar
from ..errors import NndctError
from ..ir.graph import Node, Ref, TensorMeta
from ..ir.ops import Op
from ..nn.functional import resolve_aten
from .onnx_builder import OnnxBuilder, onnx_dtype, onnx_lowers
from .onnx_ops import dims, int_value

__all__ = ["ATEN_LOWERINGS", "AtenCall", "aten_lowers"]


class AtenCall:
    """One ATen node's arguments, bound to the names of its schema, and ways to read them as ONNX values."""

    def __init__(self, b: OnnxBuilder, node: Node) -> None:
        self.b, self.node, self.name = b, node, node.name
        schema = resolve_aten(node.attrs["target"])._schema
        args, kwargs = node.attrs["args"], node.attrs["kwargs"]
        self.args: dict[str, Any] = {}
        for k, arg in enumerate(schema.arguments):
            if k < len(args) and not arg.kwarg_only:
                self.args[arg.name] = args[k]
            elif arg.name in kwargs:
                self.args[arg.name] = kwargs[arg.name]
            else:
                self.args[arg.name] = arg.default_value if arg.has_default_value() else None
        meta = node.meta[0] if isinstance(node.meta, tuple) else node.meta
        self.dtype = meta.dtype if isinstance(meta, TensorMeta) else "float32"

    def __getitem__(self, name: str) -> Any:
        return self.args[name]

    def source(self, name: str) -> Node:
        """The node an argument refers to."""
        value = self.args[name]
        if not isinstance(value, Ref):
            raise NndctError(f"{self.node.where()}: argument {name} of {self.target} is not a tensor")
        return self.node.inputs[value.index]

    @property
    def target(self) -> str:
        return self.node.attrs["target"]

    def rank(self, name: str) -> int:
        return len(self.source(name).meta.shape)

    def dtype_of(self, name: str) -> str:
        value = self.args[name]
        if isinstance(value, Ref):
            src = self.source(name)
            return "int64" if src.op in (Op.SIZE, Op.SCALAR) else src.meta.dtype
        return "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float32"

    def tensor(self, name: str, dtype: str | None = None) -> str:
        """The argument as an ONNX value: a tensor or size it refers to, or a number as a constant; cast to
        `dtype` (default: the tensor's own type, for numbers the node's output type)."""
        value = self.args[name]
        if isinstance(value, Ref):
            src = self.source(name)
            out = int_value(self.b, src) if src.op in (Op.SIZE, Op.SCALAR) else self.b.value[src.name]
            return self.cast(out, self.dtype_of(name), dtype, f"{self.name}_{name}")
        if isinstance(value, list) and all(isinstance(v, int | Ref) for v in value):
            return self.cast(dims(self.b, self.node, value, f"{self.name}_{name}"), "int64", dtype, self.name)
        if not isinstance(value, int | float | bool):
            raise NndctError(f"{self.node.where()}: argument {name}={value!r} of {self.target} is not a number")
        dt = np.dtype(dtype or self.dtype)
        return self.b.init(f"{self.name}_{name}_value", np.array(value, dtype=dt))

    def cast(self, value: str, have: str, want: str | None, name: str) -> str:
        if want is None or want == have:
            return value
        return self.b.add("Cast", [value], f"{name}_to_{want}", to=onnx_dtype(want))

    def add(self, op_type: str, inputs: list[str], suffix: str = "", **attrs: Any) -> str:
        return self.b.add(op_type, inputs, f"{self.name}{suffix}", **attrs)


AtenLower = Callable[[AtenCall], "str | list[str]"]
ATEN_LOWERINGS: dict[str, AtenLower] = {}
aten_lowers = registrar(ATEN_LOWERINGS)


@onnx_lowers(Op.ATEN)
def _aten(b: OnnxBuilder, node: Node) -> None:
    target = node.attrs["target"]
    fn = ATEN_LOWERINGS.get(target)
    if fn is None:
        raise NndctError(
            f"{node.where()}: the ATen operator {target} (kept as a float op) has no ONNX lowering yet, so the model "
            "cannot be exported to ONNX. Fix: add it to export/onnx_aten.py (ATEN_LOWERINGS), or keep it out of "
            "the model's forward; the .xmodel export writes it as a custom op."
        )
    out = fn(AtenCall(b, node))
    if isinstance(out, list):  # a tuple result: getitem reads its elements
        b.value[node.name] = node.name
        b.pieces[node.name] = out
    else:
        b.emit(node, out)


def _promoted(*dtypes: str) -> str:
    """torch's promotion between tensors of these types (float32 over ints over bool)."""
    for dt in ("float64", "float32", "float16", "int64", "int32"):
        if dt in dtypes:
            return dt
    return dtypes[0]


# --------------------------------------------------------------------------- element-wise
_UNARY = {"erf": "Erf", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs",
          "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos", "floor": "Floor", "ceil": "Ceil", "sign": "Sign",
          "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "round": "Round"}  # fmt: skip


def _unary(op_type: str) -> AtenLower:
    return lambda c: c.add(op_type, [c.tensor("self", c.dtype)])


for _name, _op in _UNARY.items():
    aten_lowers(f"aten.{_name}.default")(_unary(_op))


@aten_lowers("aten.rsqrt.default")
def _rsqrt(c: AtenCall) -> str:
    return c.add("Reciprocal", [c.add("Sqrt", [c.tensor("self")], "_sqrt")])


@aten_lowers("aten.logical_not.default", "aten.bitwise_not.default")
def _not(c: AtenCall) -> str:
    if c.target == "aten.bitwise_not.default" and c.dtype_of("self") != "bool":
        return c.add("BitwiseNot", [c.tensor("self")])
    return c.add("Not", [c.tensor("self", "bool")])


@aten_lowers("aten.lift_fresh_copy.default", "aten.clone.default", "aten.alias.default", "aten.detach.default",
             "aten.contiguous.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.to.other",
             "aten._to_copy.default", "aten.type_as.default")  # fmt: skip
def _cast(c: AtenCall) -> str:
    return c.add("Identity", [c.tensor("self", c.dtype)])


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "maximum": "Max", "minimum": "Min",
          "max": "Max", "min": "Min", "pow": "Pow", "rsub": "Sub"}  # fmt: skip


@aten_lowers(*(f"aten.{n}.{o}" for n in ("add", "sub", "mul", "div") for o in ("Tensor", "Scalar")),
             "aten.maximum.default", "aten.minimum.default", "aten.max.other", "aten.min.other",
             "aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.rsub.Scalar", "aten.rsub.Tensor",
             "aten.div.Tensor_mode")  # fmt: skip
def _arith(c: AtenCall) -> str:
    name = c.target.split(".")[1]
    other = "exponent" if name == "pow" else "other"
    if name == "pow" and c.dtype == "float32" and isinstance(c[other], int | float):  # Pow keeps the base's type
        x, y = c.tensor("self", "float32"), c.b.init(f"{c.name}_exp", np.array(c[other], np.float32))
    else:
        x, y = c.tensor("self", c.dtype), c.tensor(other, c.dtype)
    if c.args.get("alpha", 1) != 1:
        y = c.add("Mul", [y, c.b.init(f"{c.name}_alpha", np.array(c["alpha"], np.dtype(c.dtype)))], "_alpha")
    if name == "rsub":
        x, y = y, x
    mode = c.args.get("rounding_mode")
    out = c.add(_ARITH[name], [x, y], "_div" if mode else "")
    if mode is None:
        return out
    if not c.dtype.startswith("float"):
        raise NndctError(f"{c.node.where()}: integer division with rounding_mode={mode} is not exported to ONNX")
    return _rounded(c, out, mode)


def _rounded(c: AtenCall, out: str, mode: str) -> str:
    if mode == "floor":
        return c.add("Floor", [out])
    return c.add("Mul", [c.add("Floor", [c.add("Abs", [out], "_abs")], "_floor"), c.add("Sign", [out], "_sign")])


_LOGICAL = {"__and__": "And", "bitwise_and": "And", "logical_and": "And", "__or__": "Or", "bitwise_or": "Or",
            "logical_or": "Or", "logical_xor": "Xor", "bitwise_xor": "Xor"}  # fmt: skip


@aten_lowers(*(f"aten.{n}.Tensor" for n in _LOGICAL if not n.startswith("logical")),
             *(f"aten.{n}.default" for n in _LOGICAL if n.startswith("logical")))  # fmt: skip
def _logical(c: AtenCall) -> str:
    name = c.target.split(".")[1]
    if c.dtype != "bool":
        bitwise = {"And": "BitwiseAnd", "Or": "BitwiseOr", "Xor": "BitwiseXor"}[_LOGICAL[name]]
        return c.add(bitwise, [c.tensor("self", c.dtype), c.tensor("other", c.dtype)])
    return c.add(_LOGICAL[name], [c.tensor("self", "bool"), c.tensor("other", "bool")])


_COMPARE = {"eq": "Equal", "ne": "Equal", "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual"}


@aten_lowers(*(f"aten.{n}.{o}" for n in _COMPARE for o in ("Tensor", "Scalar")))
def _compare(c: AtenCall) -> str:
    name = c.target.split(".")[1]
    dt = _promoted(c.dtype_of("self"), c.dtype_of("other"))
    out = c.add(_COMPARE[name], [c.tensor("self", dt), c.tensor("other", dt)], "_eq" if name == "ne" else "")
    return c.add("Not", [out]) if name == "ne" else out


@aten_lowers("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(c: AtenCall) -> str:
    return c.add("Where", [c.tensor("condition", "bool"), c.tensor("self", c.dtype), c.tensor("other", c.dtype)])


@aten_lowers("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(c: AtenCall) -> str:
    return c.add("Where", [c.tensor("mask", "bool"), c.tensor("value", c.dtype), c.tensor("self", c.dtype)])


@aten_lowers("aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default", "aten.clamp_max.default")
def _clamp(c: AtenCall) -> str:
    y = c.tensor("self", c.dtype)
    for arg, op_type in (("min", "Max"), ("max", "Min")):
        if c.args.get(arg) is not None:
            y = c.add(op_type, [y, c.tensor(arg, c.dtype)], f"_{arg}")
    return c.add("Identity", [y])

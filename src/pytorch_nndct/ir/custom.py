"""User-registered custom ops (`pytorch_nndct.utils.register_custom_op`, VAIQ35 6).

A decorated function `fn(ctx, *args)` becomes one opaque operator for capture: each call goes through a
`torch.library` op `nndct_custom::<op_type>` (one overload per argument signature, defined at the first
call with it), so torch.export records a single node instead of the function's insides. The function
itself runs as that op's kernel (ctx is None) and, on fake tensors, as its shape function; it must return
exactly one tensor and use torch operations only (no loops over tensor values), as the original requires.

The front end turns such a node into `Op.CUSTOM`: the last `len(attrs_list)` arguments become its named
attributes. It runs in float in the generated module, is written into the .xmodel as an op of type
`op_type` (the compiler places it on the CPU), and its output is quantized only when `op_type` is listed
in `torch_quantizer(custom_quant_ops=[...])`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError

__all__ = ["NAMESPACE", "CustomOpDef", "custom_op_def", "register_custom_op", "registered_custom_ops"]

NAMESPACE = "nndct_custom"


@dataclass(frozen=True)
class CustomOpDef:
    op_type: str
    attrs_list: tuple[str, ...]
    mapping_to_xir: bool
    fn: Callable[..., Any]


_REGISTRY: dict[str, CustomOpDef] = {}
_LIBRARY: dict[str, Any] = {}
_DEFINED: set[tuple[str, str]] = set()


def registered_custom_ops() -> dict[str, CustomOpDef]:
    return dict(_REGISTRY)


def custom_op_def(op_type: str) -> CustomOpDef | None:
    return _REGISTRY.get(op_type)


def _reserved_names() -> set[str]:
    from .ops import Op

    return {op.value for op in Op}


def _kind(value: Any) -> tuple[str, str]:
    """(schema type, overload code) of one argument."""
    if isinstance(value, torch.Tensor):
        return "Tensor", "T"
    if value is None:
        return "Tensor?", "N"
    if isinstance(value, bool):
        return "bool", "b"
    if isinstance(value, int):
        return "SymInt", "i"
    if isinstance(value, float):
        return "float", "f"
    if isinstance(value, str):
        return "str", "s"
    if isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "SymInt[]", "I"
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        return "float[]", "F"
    if isinstance(value, list | tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return "Tensor[]", "L"
    raise InputError(
        f"a custom op argument of type {type(value).__name__} is not supported; pass tensors, numbers, strings, "
        "or lists of them."
    )


def _library() -> Any:
    if "lib" not in _LIBRARY:
        _LIBRARY["lib"] = torch.library.Library(NAMESPACE, "FRAGMENT")
    return _LIBRARY["lib"]


def _overload(op: CustomOpDef, args: tuple) -> Any:
    kinds = [_kind(a) for a in args]
    overload = "o_" + "".join(code for _, code in kinds) if kinds else "o_"
    key = (op.op_type, overload)
    if key not in _DEFINED:
        params = ", ".join(f"{t} a{k}" for k, (t, _) in enumerate(kinds))
        lib = _library()
        lib.define(f"{op.op_type}.{overload}({params}) -> Tensor")
        qualname = f"{NAMESPACE}::{op.op_type}.{overload}"

        def kernel(*a: Any) -> torch.Tensor:
            out = _REGISTRY[op.op_type].fn(None, *a)  # the latest registration of a re-run definition
            if not isinstance(out, torch.Tensor):
                raise InputError(f"custom op {op.op_type!r} must return exactly one tensor, got {type(out).__name__}.")
            return out.clone() if any(out is x for x in a) else out  # an op must not return its input

        lib.impl(f"{op.op_type}.{overload}", kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, kernel, lib=lib)
        _DEFINED.add(key)
    return getattr(getattr(torch.ops, NAMESPACE), op.op_type).__getattr__(overload)


def register_custom_op(
    op_type: str, attrs_list: Sequence[str] | None = None, mapping_to_xir: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make `fn(ctx, *args)` one op of type `op_type` for the quantizer (see the module doc).

    The last `len(attrs_list)` arguments of each call are the op's attributes, named by `attrs_list`, in
    that order. `mapping_to_xir=True` says `op_type` is an op XIR already knows (it may then equal one of
    our op names); the .xmodel gets an op of that type either way.
    """
    if not isinstance(op_type, str) or not op_type.isidentifier():
        raise InputError(f"register_custom_op: op_type must be an identifier such as 'MyOp', got {op_type!r}.")
    attrs = tuple(attrs_list or ())
    if not all(isinstance(a, str) and a for a in attrs):
        raise InputError(f"register_custom_op({op_type!r}): attrs_list must be a list of names, got {attrs_list!r}.")
    if op_type in _reserved_names() and not mapping_to_xir:
        raise InputError(
            f"register_custom_op: {op_type!r} is the name of a built-in op. Fix: choose another op_type, or pass "
            "mapping_to_xir=True if you mean XIR's op of that name."
        )

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _REGISTRY.get(op_type)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise InputError(
                f"register_custom_op: {op_type!r} is already registered for {old.fn.__qualname__}. Fix: give each "
                "custom op its own op_type."
            )
        op = CustomOpDef(op_type, attrs, bool(mapping_to_xir), fn)
        _REGISTRY[op_type] = op

        @functools.wraps(fn)
        def call(*args: Any) -> torch.Tensor:
            if len(args) < len(attrs):
                raise InputError(
                    f"custom op {op_type!r} takes its attributes {list(attrs)} as its last arguments, but was "
                    f"called with {len(args)} argument(s)."
                )
            norm = tuple(list(a) if isinstance(a, tuple) else a for a in args)
            return _overload(op, norm)(*norm)

        call.nndct_custom_op = op_type  # type: ignore[attr-defined]
        return call

    return decorate

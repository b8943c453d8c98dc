"""Which example inputs carry the batch, and how to capture them so the batch stays symbolic.

torch.export gives a dimension of size 0 or 1 a fixed value whatever `dynamic_shapes` says (its 0/1
specialisation), so a model exported from the usual batch-1 example (`torch.randn(1, 3, 224, 224)`)
would accept only batch 1. We do not fight that inside torch.export. The front end instead exports on a
widened copy of the example, the batched tensors repeated to batch 2 (`widen`), with `Dim.AUTO` on
their first dimension (`dynamic_shapes`), then checks that the exported program reproduces the eager
model on the user's real batch-1 inputs (`mismatch`). Other ways were tried and rejected: size-oblivious
tracing at batch 1 (torch's `backed_size_oblivious`) still pins the batch inside torch's own kernels
(`nn.MultiheadAttention` in vit_b_32 guards on `B == 1` through a contiguity test), and the unbacked
`ShapesSpec` API fails on any Python test of the batch size.

A tensor is batched when its first dimension equals that of the first tensor input; for a batch of 1
it must also have two or more dimensions, so a shape-[1] scalar tensor is left alone. A `[1, seq]` mask
next to a `[1, 3, H, W]` image is therefore taken as batched, as it would be at batch 2 or more. Where
the model's code does fix the batch (`x.reshape(1, 512)`, a `view(1, -1)` feeding a layer of fixed
width, `if x.size(0) == 1:`), the widened capture fails or gives other results, and the front end keeps
the example's batch of 1 with a warning naming the line: where the widened forward fails, or where the
eager forward first calls other operations at batch 1 than at batch 2 (`divergence`).
"""

from __future__ import annotations

import ast
import dataclasses
import traceback
from typing import Any

import torch
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode

from .fx_import import user_frame
from .graph import Graph, TensorMeta

__all__ = [
    "WIDE_BATCH",
    "at_batch",
    "batch_of",
    "divergence",
    "dynamic_shapes",
    "evaluate_dim",
    "is_batched",
    "mismatch",
    "widen",
]

WIDE_BATCH = 2


def batch_of(args: tuple) -> int | None:
    """The first dimension of the first tensor input (the example's batch size); None when that tensor is not
    batched (a scalar, or a one-dimensional tensor of one element)."""
    leaves, _ = torch.utils._pytree.tree_flatten(args)
    first = next((v for v in leaves if isinstance(v, torch.Tensor)), None)
    if first is None or first.dim() == 0:
        return None
    return int(first.shape[0]) if is_batched(first, int(first.shape[0])) else None


def is_batched(t: torch.Tensor, batch: int | None) -> bool:
    """Whether tensor input `t` is taken to carry the batch (see the module docstring)."""
    if batch is None or t.dim() == 0 or t.shape[0] != batch:
        return False
    return batch != 1 or t.dim() >= 2


def _map_tensors(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def dynamic_shapes(args: tuple, batch: int | None) -> tuple:
    """torch.export's `dynamic_shapes` for `args`: `Dim.AUTO` on the first dimension of batched tensors."""

    def spec(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return {0: Dim.AUTO} if is_batched(v, batch) else None
        if isinstance(v, list | tuple):
            return type(v)(spec(x) for x in v)
        if isinstance(v, dict):
            return {k: spec(x) for k, x in v.items()}
        return None

    return tuple(spec(a) for a in args)


def widen(args: tuple, batch: int | None) -> tuple:
    """`args` with every batched tensor repeated along its first dimension to WIDE_BATCH samples."""

    def grow(t: torch.Tensor) -> torch.Tensor:
        if not is_batched(t, batch):
            return t
        return t.repeat(WIDE_BATCH // t.shape[0], *([1] * (t.dim() - 1)))

    return _map_tensors(args, grow)


def mismatch(reference: Any, result: Any) -> str | None:
    """Why `result` differs from the eager `reference` (structure, shape, dtype or values), None if it does not.

    Values may differ by float rounding: the exported graph can order a reduction differently."""
    ref_leaves, ref_spec = torch.utils._pytree.tree_flatten(reference)
    out_leaves, out_spec = torch.utils._pytree.tree_flatten(result)
    if ref_spec != out_spec:
        return f"it returns {out_spec} where the model returns {ref_spec}"
    for k, (r, o) in enumerate(zip(ref_leaves, out_leaves)):
        if not isinstance(r, torch.Tensor):
            if r != o:
                return f"output {k} is {o!r}, not {r!r}"
            continue
        if not isinstance(o, torch.Tensor) or o.shape != r.shape or o.dtype != r.dtype:
            got = f"{tuple(o.shape)} {o.dtype}" if isinstance(o, torch.Tensor) else type(o).__name__
            return f"output {k} is {got}, not {tuple(r.shape)} {r.dtype}"
        r, o = r.detach(), o.detach()
        if not r.is_floating_point():
            if not torch.equal(r, o):
                return f"output {k} has other values"
            continue
        finite = r[torch.isfinite(r)]
        tol = 1e-4 * (finite.abs().max().item() if finite.numel() else 0.0) + 1e-6
        if not torch.isclose(r, o, rtol=0.0, atol=tol, equal_nan=True).all():
            worst = (r - o).abs().nan_to_num(nan=float("inf")).max().item()
            return f"output {k} differs by up to {worst:.3g}"
    return None


class _Calls(TorchDispatchMode):
    """Records each ATen call of one eager forward with the user's line that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.calls.append((str(func), user_frame(traceback.extract_stack())))
        return func(*args, **(kwargs or {}))


def divergence(module: torch.nn.Module, args: tuple) -> str:
    """Where the eager forward on `args` (batch 1) first runs other operations than on `widen(args)`: the user's
    line ('file:line') of the first call that differs, '' when the two runs call the same operations."""
    runs = []
    for inputs in (args, widen(args, 1)):
        rec = _Calls()
        try:
            with torch.no_grad(), rec:
                module(*inputs)
        except Exception:  # a forward that fails at batch 2 stops the record where it failed
            pass
        runs.append(rec.calls)
    one, two = runs
    for (op1, line1), (op2, line2) in zip(one, two):
        if op1 != op2 or line1 != line2:
            return line1 or line2
    return one[len(two)][1] if len(one) > len(two) else (two[len(one)][1] if len(two) > len(one) else "")


_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}  # fmt: skip


def _evaluate(expr: ast.AST, names: dict[str, int]) -> int:
    """Integer arithmetic on known names only (no calls, no attributes)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, int):
        return expr.value
    if isinstance(expr, ast.Name) and expr.id in names:
        return names[expr.id]
    if isinstance(expr, ast.BinOp) and type(expr.op) in _ARITH:
        return _ARITH[type(expr.op)](_evaluate(expr.left, names), _evaluate(expr.right, names))
    raise ValueError(f"cannot evaluate {ast.dump(expr)}")


def evaluate_dim(dim: int | str, batch: int) -> int:
    """A symbolic dimension ('B', '12*B', ...) at this batch size; ValueError if it depends on more."""
    if isinstance(dim, int):
        return dim
    try:
        return _evaluate(ast.parse(dim, mode="eval").body, {"B": batch})
    except SyntaxError as exc:
        raise ValueError(f"cannot evaluate {dim!r}") from exc


def at_batch(graph: Graph, batch: int) -> Graph:
    """Give every tensor shape of `graph` that follows the batch its size at `batch`, in place (reports)."""

    def fixed(meta: object) -> object:
        if isinstance(meta, tuple):
            return tuple(fixed(m) for m in meta)
        if not isinstance(meta, TensorMeta):
            return meta
        dims = []
        for d in meta.shape:
            try:
                dims.append(evaluate_dim(d, batch))
            except ValueError:
                dims.append(d)
        return dataclasses.replace(meta, shape=tuple(dims))

    for node in [*graph.inputs, *graph.nodes]:
        node.meta = fixed(node.meta)
    return graph

"""The front end: capture an nn.Module into our Graph.

First choice is torch.export (non-strict) with a dynamic batch dimension, which gives a graph whose
reshapes follow the batch size. An example of batch 1 (the usual `torch.randn(1, 3, 224, 224)`) is
exported widened to batch 2 and checked against the eager model on the real example, because torch.export
fixes any dimension of size 1 (ir/batch.py says why and which inputs count as batched); only a model whose
code fixes the batch keeps batch 1, with a warning naming the line. Where export refuses the model because
of Python control flow that depends on tensor values (`if x.mean() > 0:`), we fall back to a concrete trace
on the real example inputs, like torch.jit.trace: the branch taken and the example's batch size are baked
in, and a warning says where.
"""

from __future__ import annotations

import inspect
import logging
import re
import traceback
import warnings
from typing import Any

import torch
import torch.fx

from ..errors import CaptureError, InputError
from .batch import WIDE_BATCH, batch_of, divergence, dynamic_shapes, mismatch, widen
from .concrete import concrete_trace
from .fx_import import FxSource, import_fx, user_frame
from .graph import Graph, InputSpec, Ref
from .verify import verify

__all__ = ["normalize_inputs", "trace"]

log = logging.getLogger("pytorch_nndct")


def normalize_inputs(example_inputs: Any) -> tuple:
    """The seed accepts a bare tensor or a tuple of positional arguments; anything else is one argument."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    return (example_inputs,)


def _check_leaves(value: Any, path: str) -> None:
    if isinstance(value, torch.Tensor | int | float | bool | str | type(None)):
        return
    if isinstance(value, list | tuple):
        for k, v in enumerate(value):
            _check_leaves(v, f"{path}[{k}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise InputError(
                    f"example input {path} has a dict key {k!r} of type {type(k).__name__}; use string or integer keys."
                )
            _check_leaves(v, f"{path}[{k!r}]")
        return
    raise InputError(
        f"example input {path} is a {type(value).__name__}, which cannot be traced. Pass tensors, or "
        "tuples, lists and dicts of tensors (numbers and None are allowed as constants), e.g. "
        "trace(model, (torch.randn(1, 3, 224, 224),))."
    )


def _templates(module: torch.nn.Module, args: tuple) -> list[InputSpec]:
    """One InputSpec per forward argument; tensor leaves become Refs to the inputs, in order."""
    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        if isinstance(v, torch.Tensor):
            count += 1
            return Ref(count - 1)
        if isinstance(v, list | tuple):
            return type(v)(walk(x) for x in v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    try:
        names = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        names = []
    specs = []
    for k, a in enumerate(args):
        name = names[k] if k < len(names) and names[k].isidentifier() else f"input_{k}"
        specs.append(InputSpec(name, walk(a)))
    return specs


def _run_eager(module: torch.nn.Module, args: tuple) -> Any:
    try:
        with torch.no_grad():
            return module(*args)
    except Exception as exc:
        where = user_frame(traceback.extract_tb(exc.__traceback__))
        shapes = ", ".join(f"{tuple(t.shape)}" for t in _flat_tensors(args))
        raise InputError(
            f"the model's forward failed on the example inputs (shapes {shapes}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
            + (f" (at {where})" if where else "")
            + ". Fix: pass example inputs with the types and shapes the model's forward expects."
        ) from exc


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [v for v in leaves if isinstance(v, torch.Tensor)]


def _check_outputs(value: Any) -> None:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor | int | float | bool | str | type(None)):
            raise CaptureError(
                f"the model returns a {type(leaf).__name__}, which a captured graph cannot reproduce. "
                "Fix: return tensors, or tuples, lists and dicts of tensors."
            )


def _export_program(module: torch.nn.Module, args: tuple, dynamic: bool) -> torch.export.ExportedProgram:
    shapes = dynamic_shapes(args, batch_of(args)) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def _first_input(ep: torch.export.ExportedProgram) -> Any:
    """The example value of the first tensor user input of an exported program (None without one)."""
    names = [
        s.arg.name
        for s in ep.graph_signature.input_specs
        if s.kind.name == "USER_INPUT" and type(s.arg).__name__ == "TensorArgument"
    ]
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and names and n.name == names[0]), None)
    return node.meta.get("val") if node is not None else None


def _batch_symbol(ep: torch.export.ExportedProgram) -> str | None:
    first = _first_input(ep)
    if isinstance(first, torch.Tensor) and first.dim() > 0 and not isinstance(first.shape[0], int):
        return str(first.shape[0])
    return None


def _import(ep: torch.export.ExportedProgram, specs: list[InputSpec], name: str) -> Graph:
    sig = ep.graph_signature
    param_of: dict[str, str] = {}
    params: dict[str, torch.Tensor] = {}
    user_inputs: list[str] = []
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            if type(spec.arg).__name__ == "TensorArgument":
                user_inputs.append(spec.arg.name)
            continue
        target = spec.target
        value = ep.state_dict.get(target) if target in ep.state_dict else ep.constants.get(target)
        if isinstance(value, torch.Tensor):
            param_of[spec.arg.name] = target
            params[target] = value.detach()
    symbol = _batch_symbol(ep)
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    flat_out = list(out_node.args[0])
    out_template = torch.utils._pytree.tree_unflatten([Ref(i) for i in range(len(flat_out))], ep.call_spec.out_spec)
    src = FxSource(
        graph=ep.graph,
        name=name,
        param_of=param_of,
        params=params,
        input_specs=specs,
        user_inputs=user_inputs,
        output=out_template,
        output_values=flat_out,
        batch_symbols={symbol} if symbol else set(),
    )
    return import_fx(src)


def _export_wide(module: torch.nn.Module, args: tuple, reference: Any) -> tuple[Any, str]:
    """Export a batch-1 example widened to batch 2 (see ir/batch.py); (program, "") or (None, why not)."""
    try:
        ep = _export_program(module, widen(args, 1), dynamic=True)
    except Exception as exc:
        if _is_data_dependent(exc, strict=True):
            raise  # the export at batch 1 fails the same way: the concrete fallback takes over
        where = user_frame(traceback.extract_tb(exc.__traceback__))
        detail = re.sub(r"\bs\d+\b", "B", _short(exc)).rstrip(".")  # torch names the batch s77 or the like
        return None, f"at batch {WIDE_BATCH} its forward fails{' at ' + where if where else ''} ({detail})"
    if _batch_symbol(ep) is None:
        why = f"torch.export fixes the batch size at {WIDE_BATCH}"
    else:
        try:
            program = ep.module(check_guards=False)
            program.validate_inputs = False  # its recorded range (batch >= 2) is the 0/1 rule, not the model's
            with torch.no_grad():
                differs = mismatch(reference, program(*args))
        except Exception as exc:
            differs = f"it fails: {_short(exc)}"
        if differs is None:
            return ep, ""
        why = f"the graph captured at batch {WIDE_BATCH} does not reproduce the model at batch 1 ({differs})"
    where = divergence(module, args)
    return None, why + (f"; its code takes another path at batch 1 from {where}" if where else "")


def _export(module: torch.nn.Module, args: tuple, specs: list[InputSpec], name: str, reference: Any) -> Graph:
    batch = batch_of(args)
    if batch != 1:
        graph = _import(_export_program(module, args, dynamic=True), specs, name)
        if batch is not None and not _has_batch(graph):
            log.warning(
                "the batch size was specialised to %d while capturing %s; the "
                "generated model accepts only that batch size.",
                batch,
                name,
            )
        return graph
    ep, why = _export_wide(module, args, reference)
    if ep is not None:
        return _import(ep, specs, name)
    graph = _import(_export_program(module, args, dynamic=False), specs, name)
    log.warning(
        "%s keeps the batch size of its example inputs (1): %s. The generated model accepts "
        "only batch 1; to follow any batch, make that code read the batch from the input (x.size(0), -1).",
        name,
        why,
    )
    return graph


def _has_batch(graph: Graph) -> bool:
    return any(isinstance(d, str) and "B" in d for n in graph.inputs if n.meta for d in n.meta.shape[:1])


_DATA_DEPENDENT = {"GuardOnDataDependentSymNode", "DataDependentOutputException", "DynamicOutputShapeException"}


def _is_data_dependent(exc: BaseException, strict: bool = False) -> bool:
    """Whether export failed on control flow or shapes that depend on tensor values (strict: surely so)."""
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc))
    loose = set() if strict else {"UserError", "UnsupportedOperatorException"}
    return bool(names & (_DATA_DEPENDENT | loose) or "data-dependent" in text or "data dependent" in text)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _short(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def trace(module: torch.nn.Module, example_inputs: Any) -> Graph:
    """Capture `module` called on `example_inputs` (a tensor or a tuple of arguments) as a Graph."""
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"trace() needs a torch.nn.Module, got {type(module).__name__}. Fix: pass the model object "
            "itself (e.g. torchvision.models.resnet18()), not its state dict, class or output."
        )
    args = normalize_inputs(example_inputs)
    for k, a in enumerate(args):
        _check_leaves(a, f"#{k}")
    name = type(module).__name__
    was_training = module.training
    module.eval()
    try:
        out = _run_eager(module, args)
        _check_outputs(out)
        specs = _templates(module, args)
        try:
            graph = _export(module, args, specs, name, out)
        except Exception as exc:  # torch.export refused: fall back to a concrete trace
            export_error = exc
            reason = _short(exc)
            where = user_frame(traceback.extract_tb(exc.__traceback__))
            kind = "data-dependent control flow" if _is_data_dependent(exc) else "an unsupported construct"
            log.warning(
                "torch.export could not capture %s (%s%s); falling back to a concrete trace "
                "on the example inputs, which bakes in every branch taken (as torch.jit.trace does)%s. %s",
                name,
                kind,
                f" at {where}" if where else "",
                "" if batch_of(args) is None else f" and fixes the batch size at {batch_of(args)}",
                reason,
            )
            try:
                graph = concrete_trace(module, args, specs, name)
            except CaptureError as cexc:
                raise CaptureError(
                    f"{name} cannot be captured. torch.export failed with {reason}"
                    + (f" at {where}" if where else "")
                    + f"; the concrete fallback trace failed too: {cexc} Fix: rewrite that line with torch "
                    "operations on tensors (no NumPy, no .tolist()), or wrap the part that cannot be traced "
                    "out of the module you quantize."
                ) from export_error
    finally:
        module.train(was_training)
    verify(graph)
    return graph

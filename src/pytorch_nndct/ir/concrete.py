"""The concrete fallback tracer: record the ATen calls of one real forward pass.

Used when torch.export refuses a model that torch.jit.trace would accept, typically Python control flow
on tensor values. A dispatch mode sees every ATen call made while the model runs on the real example
inputs; each call becomes an fx node, and tensors are followed by identity from the inputs and the
model's parameters. Values read back into Python (`bool(t)`, `t.item()`) are baked into the graph, with
a warning naming the line. A tensor that appears from nowhere (made through NumPy, say) cannot be
followed; that is an error naming the line where it entered.
"""

from __future__ import annotations

import functools
import logging
import operator
import traceback
from typing import Any

import torch
import torch.fx
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import CaptureError
from .fx_import import FxSource, import_fx, user_frame
from .graph import Graph, InputSpec, Ref

__all__ = ["concrete_trace"]

log = logging.getLogger("pytorch_nndct")

_SCALAR_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default"}
_LIFTS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.lift.default"}


def _module_tensors(module: torch.nn.Module) -> dict[int, tuple[str, torch.Tensor]]:
    """Every tensor the model owns, by identity: parameters, buffers and plain tensor attributes."""
    found: dict[int, tuple[str, torch.Tensor]] = {}
    for name, t in module.named_parameters(remove_duplicate=False):
        found.setdefault(id(t), (name, t))
    for name, t in module.named_buffers(remove_duplicate=False):
        found.setdefault(id(t), (name, t))
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_"):
                found.setdefault(id(value), (f"{prefix}.{attr}" if prefix else attr, value))
    return found


class _Recorder(TorchDispatchMode):
    def __init__(self, module: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.graph = torch.fx.Graph()
        self.nodes: dict[int, torch.fx.Node] = {}
        self.keep: list[Any] = []  # keeps traced tensors alive so their ids stay unique
        self.owned = _module_tensors(module)
        self.param_of: dict[str, str] = {}
        self.params: dict[str, torch.Tensor] = {}
        self.scopes: list[tuple[str, str]] = []
        self.baked: list[str] = []
        self.input_names: list[str] = []
        self.error: CaptureError | None = None
        self.dependent: set[int] = set()  # ids of tensors whose values depend on the inputs
        for k, t in enumerate(inputs):
            self.dependent.add(id(t))
            node = self.graph.placeholder(f"input_{k}")
            node.meta["val"] = t
            self.nodes[id(t)] = node
            self.input_names.append(node.name)
            self.keep.append(t)

    def _param_node(self, name: str, t: torch.Tensor) -> torch.fx.Node:
        node = self.graph.placeholder(f"param_{len(self.params)}")
        node.meta["val"] = t
        self.param_of[node.name] = name
        self.params[name] = t.detach()
        self.nodes[id(t)] = node
        self.keep.append(t)
        return node

    def _arg(self, value: Any, func_name: str) -> Any:
        if isinstance(value, torch.Tensor):
            node = self.nodes.get(id(value))
            if node is not None:
                return node
            if id(value) in self.owned:
                return self._param_node(*self.owned[id(value)])
            if func_name in _LIFTS:
                return self._param_node(f"_tensor_constant{len(self.params)}", value)
            where = user_frame(traceback.extract_stack())
            raise CaptureError(
                f"a tensor of shape {tuple(value.shape)} entered the computation outside torch operations "
                f"(through NumPy, .tolist() or a C extension){' at ' + where if where else ''}, so the trace "
                "cannot follow where its values come from."
            )
        if isinstance(value, list | tuple):
            return type(value)(self._arg(v, func_name) for v in value)
        if isinstance(value, dict):
            return {k: self._arg(v, func_name) for k, v in value.items()}
        return value

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.error is not None:
            return out
        name = str(func)
        if name in _SCALAR_READS:
            where = user_frame(traceback.extract_stack())
            self.baked.append(where or "an unknown line")
            return out
        try:
            fx_args = self._arg(args, name)
            fx_kwargs = self._arg(kwargs, name)
        except CaptureError as exc:
            self.error = exc
            return out
        node = self.graph.call_function(func, fx_args, fx_kwargs)
        flat_args, _ = torch.utils._pytree.tree_flatten((args, kwargs))
        depends = any(isinstance(a, torch.Tensor) and id(a) in self.dependent for a in flat_args)
        node.meta["val"] = out
        node.meta["stack_trace"] = "".join(traceback.format_stack())
        if self.scopes:
            node.meta["nn_module_stack"] = {s[0]: s for s in self.scopes}
        self.keep.append(out)
        if isinstance(out, torch.Tensor):
            self.nodes[id(out)] = node
            if depends:
                self.dependent.add(id(out))
        elif isinstance(out, list | tuple):
            for k, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, k))
                    item.meta["val"] = t
                    self.nodes[id(t)] = item
                    if depends:
                        self.dependent.add(id(t))
        return out


_LEAKS = {torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__array__, torch.Tensor.data_ptr}


class _LeakGuard(TorchFunctionMode):
    """Stops the trace where an input-dependent tensor leaves torch (NumPy, lists): it cannot be followed."""

    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _LEAKS and args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.rec.dependent:
            if self.rec.error is None:
                where = user_frame(traceback.extract_stack())
                self.rec.error = CaptureError(
                    f"an input-dependent tensor leaves torch through Tensor.{func.__name__}()"
                    f"{' at ' + where if where else ''}; what is computed from it cannot be traced."
                )
        return func(*args, **(kwargs or {}))


def _enter(scopes: list, scope: tuple[str, str], module: Any, args: Any) -> None:
    scopes.append(scope)


def _leave(scopes: list, module: Any, args: Any, output: Any) -> None:
    if scopes:
        scopes.pop()


def concrete_trace(module: torch.nn.Module, args: tuple, specs: list[InputSpec], name: str) -> Graph:
    """Trace one real forward pass of `module` on `args` into a Graph (batch size fixed)."""
    flat, _ = torch.utils._pytree.tree_flatten(args)
    inputs = [t for t in flat if isinstance(t, torch.Tensor)]
    rec = _Recorder(module, inputs)
    handles = []
    for path, sub in module.named_modules():
        if not path:
            continue
        scope = (path, f"{type(sub).__module__}.{type(sub).__qualname__}")
        handles.append(sub.register_forward_pre_hook(functools.partial(_enter, rec.scopes, scope)))
        handles.append(sub.register_forward_hook(functools.partial(_leave, rec.scopes)))
    try:
        with torch.no_grad(), rec, _LeakGuard(rec):
            out = module(*args)
    except Exception as exc:
        where = user_frame(traceback.extract_tb(exc.__traceback__))
        raise CaptureError(f"the forward pass raised {type(exc).__name__}: {exc} at {where}.") from exc
    finally:
        for h in handles:
            h.remove()
    if rec.error is not None:
        raise rec.error
    for where in dict.fromkeys(rec.baked):
        log.warning(
            "%s reads a tensor value into Python at %s; the branch taken on the example "
            "inputs is baked into the captured graph.",
            name,
            where,
        )
    flat_out, out_spec = torch.utils._pytree.tree_flatten(out)
    values: list[Any] = []
    for v in flat_out:
        if isinstance(v, torch.Tensor):
            node = rec.nodes.get(id(v))
            if node is None:
                raise CaptureError(f"{name} returns a tensor that was not computed by torch operations.")
            values.append(node)
        else:
            values.append(v)
    template = torch.utils._pytree.tree_unflatten([Ref(i) for i in range(len(values))], out_spec)
    src = FxSource(
        graph=rec.graph,
        name=name,
        param_of=rec.param_of,
        params=rec.params,
        input_specs=specs,
        user_inputs=rec.input_names,
        output=template,
        output_values=values,
    )
    return import_fx(src)

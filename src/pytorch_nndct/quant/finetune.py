"""Fast finetune (SPEC 2.5; AdaQuant, Hubara et al. 2020): layer by layer, fit the quantized weights.

For each conv/linear layer in graph order: run the user's function once in float (the layer's float
output is the target) and once quantized (the layer's input, with every earlier layer already
finetuned), fit the layer's weight and bias with Adam through the fake-quantization (straight-through
gradient, fix positions kept) so the quantized output matches the float one, then run the user's
function again and keep the new parameters only if the network's loss went down.

Only one layer's input and float output are cached at a time, so memory is bounded by the largest layer
(`cache_bytes` says how much before anything runs). The fitted tensors become overrides of the layer's
parameters used when quantized; the float model itself is never changed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import Op
from .scales import quantize_param
from .spec import CalibSpec, QuantSpec

__all__ = ["FINETUNE_OPS", "FinetuneLayer", "cache_bytes", "capture", "fit_layer", "loss_value"]

log = logging.getLogger("pytorch_nndct")

FINETUNE_OPS = frozenset({Op.CONV1D, Op.CONV2D, Op.CONV3D, Op.LINEAR})


@dataclass
class FinetuneLayer:
    node: Node
    module: torch.nn.Module
    weight_key: str
    bias_key: str | None


def loss_value(result: Any) -> float:
    """The loss `run_fn` returned: a number, a 0-d tensor, or the last item of a tuple/list (the seed's
    `evaluate` returns (top1, top5, loss))."""
    if isinstance(result, list | tuple) and result:
        result = result[-1]
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        result = result.item()
    if isinstance(result, int | float) and not isinstance(result, bool) and math.isfinite(result):
        return float(result)
    raise TypeError(
        f"fast_finetune's run_fn must return the loss (a number, or a tuple whose last item is it), got {result!r}"
    )


def cache_bytes(graph: Graph, layers: list[FinetuneLayer], samples: int) -> tuple[int, str]:
    """The largest cache one layer needs (its input and float output for `samples` samples), and which layer."""
    best, where = 0, ""
    for layer in layers:
        metas = [layer.node.inputs[0].meta, layer.node.meta]
        if not all(isinstance(m, TensorMeta) and len(m.shape) >= 1 for m in metas):
            continue
        per_sample = sum(math.prod(int(d) for d in m.shape[1:]) for m in metas)
        size = per_sample * samples * 4
        if size > best:
            best, where = size, layer.node.name
    return best, where


def _ste(t: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return t + (quantize_param(t.detach(), spec, CalibSpec()) - t.detach())


def fit_layer(
    layer: FinetuneLayer,
    inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    w_spec: QuantSpec,
    b_spec: QuantSpec | None,
    bias_offset: torch.Tensor | None = None,
    steps: int = 200,
    batch: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None, float, float]:
    """Fit weight and bias (fake-quantized with fixed fix positions) so the layer's output matches the
    targets; returns (weight, bias, loss before, loss after) on the cached data."""
    module = layer.module
    x_all, y_all = torch.cat(inputs), torch.cat(targets)
    w = weight.detach().clone().float().requires_grad_(True)
    b = bias.detach().clone().float().requires_grad_(True) if bias is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        qw = _ste(w, w_spec)
        qb = b if b is None or bias_offset is None else b + bias_offset
        qb = _ste(qb, b_spec) if qb is not None and b_spec is not None else qb
        if layer.node.op is Op.LINEAR:
            return F.linear(x, qw, qb)
        return module._conv_forward(x, qw, qb)

    def full_loss() -> float:
        with torch.no_grad():
            return (
                sum(
                    float(F.mse_loss(forward(x_all[i : i + batch]), y_all[i : i + batch], reduction="sum"))
                    for i in range(0, len(x_all), batch)
                )
                / y_all.numel()
            )

    before = full_loss()
    params = [w] + ([b] if b is not None else [])
    step = 2.0**-w_spec.fix_pos if w_spec.fix_pos is not None else float(weight.abs().max()) / w_spec.qmax
    lr = 0.1 * step  # a tenth of a weight step
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, len(x_all), (min(batch, len(x_all)),), generator=g)
            opt.zero_grad()
            loss = F.mse_loss(forward(x_all[idx.to(x_all.device)]), y_all[idx.to(y_all.device)])
            loss.backward()
            opt.step()
    after = full_loss()
    return w.detach().to(weight.dtype), None if b is None else b.detach().to(bias.dtype), before, after


def capture(module: torch.nn.Module, run: Callable[[], Any], want_input: bool) -> tuple[list[torch.Tensor], Any]:
    """Run `run()` recording the module's input (want_input) or raw output each time it is called."""
    seen: list[torch.Tensor] = []
    if want_input:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    else:
        old = module.nndct_seen

        def record(y: torch.Tensor) -> torch.Tensor:
            seen.append(y.detach())
            return y if old is None else old(y)

        module.nndct_seen = record
    try:
        result = run()
    finally:
        if want_input:
            handle.remove()
        else:
            module.nndct_seen = old
    return seen, result

"""The driver of fast finetune for `torch_quantizer.fast_finetune` (the numerics are in quant/finetune.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .export.quant_info import write_ft_params
from .quant.finetune import FINETUNE_OPS, FinetuneLayer, cache_bytes, capture, fit_layer, loss_value
from .quant.runtime import ActPoint, Mode, ParamQuant

__all__ = ["run_fast_finetune"]

log = logging.getLogger("pytorch_nndct")


def _layers(quantizer: Any) -> list[FinetuneLayer]:
    layers = []
    for k, node in enumerate(quantizer.graph.nodes):
        module = getattr(quantizer.quant_model, f"module_{k}", None)
        w_key = node.params.get("weight")
        if node.op in FINETUNE_OPS and module is not None and isinstance(quantizer.points.get(w_key), ParamQuant):
            layers.append(FinetuneLayer(node, module, w_key, node.params.get("bias")))
    return layers


def run_fast_finetune(quantizer: Any, run_fn: Callable[..., Any], run_args: tuple) -> Path:
    state, model = quantizer.state, quantizer.quant_model
    samples = [0]

    def count(module: torch.nn.Module, args: tuple) -> None:
        leaves = [t for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor) and t.dim() > 0]
        if leaves and state.mode is Mode.CALIB:
            samples[0] += leaves[0].shape[0]

    handle = model.register_forward_pre_hook(count)
    try:
        run_fn(*run_args)  # calibrates the fix positions the finetuning keeps fixed
    finally:
        handle.remove()
    layers = _layers(quantizer)
    size, where = cache_bytes(quantizer.graph, layers, samples[0])
    log.warning(
        "fast finetune: %d layer(s) on %d sample(s); caches one layer at a time, at most %.1f MiB "
        "(%s); runs your function %d times",
        len(layers), samples[0], size / 2**20, where or "-", 2 + 3 * len(layers),
    )  # fmt: skip
    points = [p for p in quantizer.points.values() if isinstance(p, ActPoint)]
    saved = {id(p): (p.fix_pos, p.scale) for p in points}
    for p in points:
        p.use_observed()
    state.mode = Mode.TEST
    kept: dict[str, torch.Tensor] = {}
    try:
        best = loss_value(run_fn(*run_args))
        start = best
        quiet = log.getEffectiveLevel() > logging.WARNING
        for n, layer in enumerate(tqdm(layers, desc="fast finetune", unit="layer", leave=False, disable=quiet)):
            pq: ParamQuant = quantizer.points[layer.weight_key]
            state.mode = Mode.FLOAT
            targets, _ = capture(layer.module, lambda: run_fn(*run_args), want_input=False)
            state.mode = Mode.TEST
            inputs, _ = capture(layer.module, lambda: run_fn(*run_args), want_input=True)
            if not inputs or len(inputs) != len(targets):
                continue
            weight = pq.overrides.get("weight", layer.module.weight)
            bias = pq.overrides.get("bias", layer.module.bias) if layer.bias_key else None
            corr = pq.corrections.get("bias")
            offset = corr.value if corr is not None and corr.value is not None else None
            w, b, before, after = fit_layer(
                layer, inputs, targets, weight, bias, pq.specs["weight"], pq.specs.get("bias"), offset
            )
            del inputs, targets
            if not after < before:
                continue
            old = dict(pq.overrides)
            pq.overrides["weight"] = w
            if b is not None:
                pq.overrides["bias"] = b
            loss = loss_value(run_fn(*run_args))
            if loss < best:
                best = loss
                kept[layer.weight_key] = w
                if b is not None:
                    kept[layer.bias_key] = b
            else:
                pq.overrides.clear()
                pq.overrides.update(old)
            verdict = "kept" if layer.weight_key in kept else "reverted"
            log.info(
                "fast finetune %d/%d %s: layer mse %.3g -> %.3g, loss %.4g (%s)",
                n + 1, len(layers), layer.node.name, before, after, loss, verdict,
            )  # fmt: skip
    finally:
        state.mode = Mode.CALIB
        for p in points:
            p.fix_pos, p.scale = saved[id(p)]
    for layer in quantizer.corrector.layers.values():  # re-estimated for the new weights by the calibration to come
        layer.reset()
    n_kept = sum(layer.weight_key in kept for layer in layers)
    log.warning("fast finetune kept %d of %d layer(s); loss %.4g -> %.4g", n_kept, len(layers), start, best)
    return write_ft_params(kept, quantizer.output_dir)

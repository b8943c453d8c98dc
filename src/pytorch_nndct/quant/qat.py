"""Quantization-aware training on the generated module: every point gets a TQT quantizer (quant/tqt.py).

The trainable model is the generated module of our graph, not a rewrite of the user's: capture already sees
`+`, `torch.cat`, functional calls and reused modules, so none of the original's model rules (functional.Add,
one call per module) is needed. `attach_tqt` gives each power-of-two point a `TQTQuantizer`, registered on
the op's generated module under the original's names (`output_quantizer` for an op's output, and
`weight_quantizer` / `bias_quantizer` / ... for its parameters), so that the thresholds are ordinary
parameters of the model (`log_threshold`): optimisers, DistributedDataParallel and state dicts see them.
In `Mode.QAT` the points run these quantizers (runtime.ActPoint / ParamQuant); the DPU's fix-position
constraints (bias, shift and concat rules) are applied when the thresholds are exported
(`fix_positions`, then rules.apply_constraints), as the original does.

The graph has batch-norm folded into the convolutions (passes/fold_bn.py), so the folded weights are the
ones trained and quantized, and BN statistics do not move during training (the original's
`freeze_bn_stats()` state).
"""

from __future__ import annotations

import logging

import torch

from ..errors import NndctError
from ..ir.graph import Graph
from .plan import QuantPlan
from .runtime import ActPoint, ParamQuant
from .spec import QuantSpec
from .table import QuantTable
from .tqt import TQTQuantizer

__all__ = ["QUANTIZER_SUFFIX", "attach_tqt", "fix_positions", "start_from"]

log = logging.getLogger("pytorch_nndct")

QUANTIZER_SUFFIX = "_quantizer"  # output_quantizer, weight_quantizer, bias_quantizer


def _trainable(key: str, spec: QuantSpec) -> None:
    if not spec.is_int or spec.float_scale or spec.per_channel:
        kind = spec.dtype.value if not spec.is_int else ("float-scale" if spec.float_scale else "per-channel")
        raise NndctError(
            f"quantization-aware training trains power-of-two per-tensor thresholds (the DPU's format), but point "
            f"{key} is {kind}. Fix: train with the default DPU quantization (no quant_config_file for CPU/GPU "
            "targets)."
        )


def attach_tqt(model: torch.nn.Module, graph: Graph, plan: QuantPlan, points: dict) -> dict[str, TQTQuantizer]:
    """A TQT quantizer for every output and parameter point of `model` (runtime.attach's points), registered on
    the op's module; returns them by point key (node names for outputs, parameter names for parameters)."""
    index = {node.name: k for k, node in enumerate(graph.nodes)}
    quantizers: dict[str, TQTQuantizer] = {}
    for key, spec in plan.outputs.items():
        point = points.get(key)
        if not isinstance(point, ActPoint):
            continue
        _trainable(key, spec)
        point.tqt = quantizers[key] = TQTQuantizer(spec.bitwidth, "activation", spec.round_mode)
        getattr(model, f"module_{index[key]}").add_module("output" + QUANTIZER_SUFFIX, point.tqt)
    for p in plan.params:
        pq = points.get(p.key)
        if not isinstance(pq, ParamQuant):
            continue
        _trainable(p.key, p.spec)
        kind = "bias" if p.role == "bias" else "weight"
        pq.tqt[p.role] = quantizers[p.key] = TQTQuantizer(p.spec.bitwidth, kind, p.spec.round_mode)
        getattr(model, f"module_{index[p.node]}").add_module(p.role + QUANTIZER_SUFFIX, pq.tqt[p.role])
    return quantizers


def start_from(quantizers: dict[str, TQTQuantizer], table: QuantTable) -> int:
    """Initialise the thresholds from a calibrated table (a post-training quant_info.json): each quantizer whose
    key has a fix position starts there, warmup off. Returns how many were set."""
    done = 0
    for key, quantizer in quantizers.items():
        fix_pos = table.fix_pos(key)
        if fix_pos is not None:
            quantizer.set_fix_pos(fix_pos)
            done += 1
    return done


def fix_positions(quantizers: dict[str, TQTQuantizer]) -> dict[str, int]:
    """The fix position each trained threshold stands for (b - 1 - ceil(log2 t)); a quantizer that never left
    warmup (never ran, so its threshold was never set from data) is reported."""
    untrained = sorted(k for k, q in quantizers.items() if int(q.warmup_enabled.item()))
    if untrained:
        shown = ", ".join(untrained[:5]) + (f" and {len(untrained) - 5} more" if len(untrained) > 5 else "")
        log.warning("exported scale values are not trained (no forward pass reached them): %s", shown)
    return {k: q.fix_pos for k, q in quantizers.items()}

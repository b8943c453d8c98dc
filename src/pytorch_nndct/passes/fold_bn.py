"""Fold batch-norm into the convolution before it (SPEC 2.4), or turn it into a per-channel scale.

With `s = gamma / sqrt(var + eps)`: `W' = W * s` per output channel and `b' = (b - mean) * s + beta`
(a bias is created when the conv has none). A conv -> concat -> BN chain folds each slice of the BN into
the conv that produced it. A BN that cannot be folded becomes `CHANNEL_SCALE` (`x * s + (beta - mean*s)`
along the channel dimension), which is what the DPU can run.
"""

from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from ..ir.ops import CONV_OPS, TRANSPOSED_CONV_OPS, Op

__all__ = ["bn_scale_shift", "bn_to_channel_scale_", "fold_bn_"]


def bn_scale_shift(graph: Graph, bn: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (scale, shift) a BN node applies: y = x * scale + shift (computed in float64)."""
    mean = graph.param(bn, "running_mean").double()
    var = graph.param(bn, "running_var").double()
    gamma = graph.param(bn, "weight")
    beta = graph.param(bn, "bias")
    gamma = torch.ones_like(mean) if gamma is None else gamma.double()
    beta = torch.zeros_like(mean) if beta is None else beta.double()
    scale = gamma / torch.sqrt(var + bn.attrs["eps"])
    return scale, beta - mean * scale


def _foldable_conv(graph: Graph, node: Node) -> bool:
    """A conv whose output only this BN (or concat) reads and whose weight no other node shares."""
    if node.op not in CONV_OPS or len(node.users) != 1 or any(n is node for n in graph.output_nodes):
        return False
    weight = node.params["weight"]
    return sum(weight in n.params.values() for n in graph.nodes) == 1


def _fold_into_conv(graph: Graph, conv: Node, scale: torch.Tensor, shift: torch.Tensor) -> None:
    w = graph.param(conv, "weight")
    out_ch = scale.numel()
    if conv.op in TRANSPOSED_CONV_OPS:
        groups = conv.attrs["groups"]
        view = w.double().reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        s = scale.reshape(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        new_w = (view * s).reshape(w.shape)
    else:
        new_w = w.double() * scale.reshape(out_ch, *([1] * (w.dim() - 1)))
    b = graph.param(conv, "bias")
    b = torch.zeros(out_ch, dtype=torch.float64) if b is None else b.double()
    new_b = b * scale + shift
    graph.params[conv.params["weight"]] = new_w.to(w.dtype).contiguous()
    if "bias" not in conv.params:
        base = conv.params["weight"].removesuffix(".weight")
        conv.params["bias"] = graph.unique_param_name(f"{base}.bias")
    graph.params[conv.params["bias"]] = new_b.to(w.dtype)


def fold_bn_(graph: Graph) -> bool:
    """Fold every BN that follows a conv (directly, or through a channel concat of convs)."""
    changed = False
    for bn in graph.find(Op.BATCH_NORM):
        src = bn.inputs[0]
        if _foldable_conv(graph, src):
            scale, shift = bn_scale_shift(graph, bn)
            _fold_into_conv(graph, src, scale, shift)
        elif _foldable_concat(graph, src):
            scale, shift = bn_scale_shift(graph, bn)
            start = 0
            for conv in src.inputs:
                n = graph.param(conv, "weight").shape[1 if conv.op in TRANSPOSED_CONV_OPS else 0]
                if conv.op in TRANSPOSED_CONV_OPS:
                    n *= conv.attrs["groups"]
                _fold_into_conv(graph, conv, scale[start : start + n], shift[start : start + n])
                start += n
        else:
            continue
        graph.replace_all_uses(bn, src)
        graph.remove_node(bn)
        changed = True
    return changed


def _foldable_concat(graph: Graph, node: Node) -> bool:
    if node.op is not Op.CAT or node.attrs["dim"] not in (1, -3) or len(node.users) != 1:
        return False
    if any(n is node for n in graph.output_nodes):
        return False
    convs = node.inputs
    if len({id(c) for c in convs}) != len(convs):
        return False
    return all(_foldable_conv(graph, c) for c in convs) and node.attrs["dim"] == 1


def bn_to_channel_scale_(graph: Graph) -> bool:
    """Every BN left becomes a per-channel scale and offset on dimension 1."""
    changed = False
    for bn in graph.find(Op.BATCH_NORM):
        scale, shift = bn_scale_shift(graph, bn)
        dtype = graph.param(bn, "running_mean").dtype
        base = bn.params["running_mean"].removesuffix(".running_mean")
        w_key = graph.unique_param_name(f"{base}.scale")
        b_key = graph.unique_param_name(f"{base}.shift")
        graph.params[w_key] = scale.to(dtype)
        graph.params[b_key] = shift.to(dtype)
        node = graph.add_node(
            Op.CHANNEL_SCALE,
            [bn.inputs[0]],
            attrs={"dim": 1},
            params={"weight": w_key, "bias": b_key},
            meta=bn.meta,
            scope=bn.scope,
            source=bn.source,
            before=bn,
        )
        graph.replace_all_uses(bn, node)
        graph.remove_node(bn)
        changed = True
    return changed

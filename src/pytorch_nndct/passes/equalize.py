"""Cross-layer equalization (SPEC 2.5, Nagel et al. 2019): balance per-channel weight ranges of conv pairs.

For conv0 -> (relu | leaky-relu | pooling)* -> conv1, where every link has a single reader, channel c of
conv0's output feeds only the weights W1[:, c] of conv1. The ops between are positively homogeneous
(f(s x) = s f(x) for s > 0), so scaling channel c of conv0 by 1/s and conv1's input channel c by s leaves
the float model unchanged. With r0 = max|W0[c]| and r1 = max|W1[:, c]|, s = sqrt(r0 / r1) makes both
ranges sqrt(r0 r1), which per-tensor quantization of both weights represents better.

Depthwise and grouped convs take part (a depthwise conv1's input channel c is its own output channel c).
A chain with ReLU6 / hardtanh between is skipped: clipping is not homogeneous, and the original tool's
silent replacement of ReLU6 by ReLU changes the model. Pairs are balanced in a few sweeps, since a conv
can be the second of one pair and the first of the next.
"""

from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from ..ir.ops import Op

__all__ = ["equalization_pairs", "equalize_", "pair_scales", "scaled_pair"]

_CONVS = frozenset({Op.CONV1D, Op.CONV2D, Op.CONV3D})
_BETWEEN = frozenset({Op.RELU, Op.LEAKY_RELU, Op.MAX_POOL2D, Op.AVG_POOL2D, Op.ADAPTIVE_AVG_POOL2D})
_SWEEPS = 4


def _single_reader(graph: Graph, node: Node) -> Node | None:
    if len(node.users) != 1 or any(n is node for n in graph.output_nodes):
        return None
    return node.users[0]


def _own_weight(graph: Graph, node: Node) -> bool:
    key = node.params.get("weight")
    return key is not None and sum(key in n.params.values() for n in graph.nodes) == 1


def equalization_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """The (conv0, conv1) pairs cross-layer equalization can balance, in graph order."""
    pairs = []
    for conv0 in graph.nodes:
        if conv0.op not in _CONVS or not _own_weight(graph, conv0):
            continue
        nxt = _single_reader(graph, conv0)
        while nxt is not None and nxt.op in _BETWEEN:
            nxt = _single_reader(graph, nxt)
        if nxt is None or nxt.op not in _CONVS or not _own_weight(graph, nxt):
            continue
        if graph.params[nxt.params["weight"]].dim() != graph.params[conv0.params["weight"]].dim():
            continue
        pairs.append((conv0, nxt))
    return pairs


def _input_ranges(w1: torch.Tensor, groups: int, channels: int) -> torch.Tensor:
    """max |W1[:, c]| for each input channel c of a (grouped) conv weight [out, in/groups, ...]."""
    per_group_in = w1.shape[1]
    out_per_group = w1.shape[0] // groups
    a = w1.abs().reshape(groups, out_per_group, per_group_in, -1).amax(dim=(1, 3))  # [groups, in/groups]
    return a.reshape(channels)


def _scale_inputs(w1: torch.Tensor, groups: int, s: torch.Tensor) -> torch.Tensor:
    per_group_in = w1.shape[1]
    out_per_group = w1.shape[0] // groups
    view = w1.reshape(groups, out_per_group, per_group_in, -1)
    return (view * s.reshape(groups, 1, per_group_in, 1)).reshape(w1.shape)


def pair_scales(graph: Graph, conv0: Node, conv1: Node) -> torch.Tensor | None:
    """s for each channel between the pair (float64; None: the shapes do not line up): conv0's output channel c
    is divided by s[c], conv1's input channel c multiplied by it."""
    w0, w1 = graph.params[conv0.params["weight"]].double(), graph.params[conv1.params["weight"]].double()
    channels = w0.shape[0]
    groups = conv1.attrs.get("groups", 1)
    if w1.shape[1] * groups != channels:
        return None
    r0 = w0.abs().reshape(channels, -1).amax(dim=1)
    r1 = _input_ranges(w1, groups, channels)
    ok = (r0 > 0) & (r1 > 0)
    s = torch.where(ok, torch.sqrt(r0 / torch.where(ok, r1, 1.0)), torch.ones_like(r0))
    return s.clamp(2.0**-16, 2.0**16)


def scaled_pair(
    graph: Graph, conv0: Node, conv1: Node, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """conv0's weight and bias and conv1's weight with the scales `s` applied (in the parameters' dtypes)."""
    w0, w1 = graph.params[conv0.params["weight"]], graph.params[conv1.params["weight"]]
    s = s.to(torch.float64)
    new_w0 = (w0.double() / s.reshape(-1, *([1] * (w0.dim() - 1)))).to(w0.dtype)
    bias = conv0.params.get("bias")
    new_b0 = None if bias is None else (graph.params[bias].double() / s).to(graph.params[bias].dtype)
    new_w1 = _scale_inputs(w1.double(), conv1.attrs.get("groups", 1), s).to(w1.dtype)
    return new_w0, new_b0, new_w1


def _balance(graph: Graph, conv0: Node, conv1: Node) -> float:
    """Equalize one pair in place; returns the largest |log2 s| applied."""
    s = pair_scales(graph, conv0, conv1)
    if s is None:
        return 0.0
    w0, b0, w1 = scaled_pair(graph, conv0, conv1, s)
    graph.params[conv0.params["weight"]], graph.params[conv1.params["weight"]] = w0, w1
    if b0 is not None:
        graph.params[conv0.params["bias"]] = b0
    return float(torch.log2(s).abs().max())


def equalize_(graph: Graph, pairs: list[tuple[Node, Node]] | None = None) -> bool:
    """Equalize `pairs` (default: every pair of `equalization_pairs`) in a few sweeps; True if any weight
    changed."""
    pairs = equalization_pairs(graph) if pairs is None else pairs
    changed = False
    for _ in range(_SWEEPS):
        largest = max((_balance(graph, a, b) for a, b in pairs), default=0.0)
        changed |= largest > 0.0
        if largest < 1e-3:
            break
    return changed

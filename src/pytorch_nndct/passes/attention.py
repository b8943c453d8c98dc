"""Decompose `scaled_dot_product_attention` into the ops the quantizer and the DPU know.

`softmax(q @ k^T * scale + mask) @ v` becomes transpose -> matmul -> mul -> (mask) -> softmax -> matmul, so
both matmuls are quantized on both inputs and the attention probabilities get their own point (SPEC 2.7),
instead of one float op hiding the whole attention. A boolean mask becomes `where(mask, scores, -inf)` and a
float mask an addition, both computed in float (the plan keeps masks off the 8-bit grids). A causal mask
becomes a boolean constant when the sequence lengths are static. Calls this cannot express exactly
(dropout in training, grouped-query attention, a causal mask over symbolic lengths) stay one float op.
"""

from __future__ import annotations

import math

import torch

from ..ir.graph import Graph, Node, Ref, TensorMeta
from ..ir.ops import Op

__all__ = ["SDPA_TARGET", "decompose_attention_"]

SDPA_TARGET = "aten.scaled_dot_product_attention.default"
_ARG_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def _call_args(node: Node) -> dict:
    """The call's arguments by name, tensors as nodes."""
    args = dict(zip(_ARG_NAMES, node.attrs["args"], strict=False))
    args.update(node.attrs["kwargs"])
    return {k: node.inputs[v.index] if isinstance(v, Ref) else v for k, v in args.items()}


def _meta(shape: tuple, dtype: str) -> TensorMeta:
    return TensorMeta(tuple(shape), dtype)


def _decomposable(a: dict) -> bool:
    q, k, v = a["query"], a["key"], a["value"]
    if not all(isinstance(t, Node) and isinstance(t.meta, TensorMeta) for t in (q, k, v)):
        return False
    if a.get("dropout_p", 0.0) not in (0, 0.0) or a.get("enable_gqa", False):
        return False
    qs, ks = q.meta.shape, k.meta.shape
    if len(qs) < 2 or len(ks) != len(qs) or qs[:-2] != ks[:-2]:
        return False  # heads differ (grouped-query attention) or broadcasting batch dims
    if a.get("is_causal", False):
        if a.get("attn_mask") is not None or not all(isinstance(d, int) for d in (qs[-2], ks[-2])):
            return False
    mask = a.get("attn_mask")
    return mask is None or (isinstance(mask, Node) and isinstance(mask.meta, TensorMeta))


def _decompose(graph: Graph, node: Node, a: dict) -> Node:
    q, k, v = a["query"], a["key"], a["value"]
    dtype = q.meta.dtype
    scale = a.get("scale")
    scale = 1.0 / math.sqrt(q.meta.shape[-1]) if scale is None else float(scale)
    rank = len(q.meta.shape)
    common = {"scope": node.scope, "source": node.source, "before": node}
    kt_shape = (*k.meta.shape[:-2], k.meta.shape[-1], k.meta.shape[-2])
    kt = graph.add_node(Op.TRANSPOSE, [k], attrs={"dim0": rank - 2, "dim1": rank - 1}, meta=_meta(kt_shape, dtype),
                        **common)  # fmt: skip
    s_meta = _meta((*q.meta.shape[:-1], k.meta.shape[-2]), dtype)
    scores = graph.add_node(Op.MATMUL, [q, kt], meta=s_meta, **common)
    scores = graph.add_node(Op.MUL, [scores], attrs={"other": scale}, meta=s_meta, **common)
    mask = a.get("attn_mask")
    if a.get("is_causal", False):
        keep = torch.ones(q.meta.shape[-2], k.meta.shape[-2], dtype=torch.bool).tril()
        key = graph.unique_param_name(f"{node.name}_causal_mask")
        graph.params[key] = keep
        mask = graph.add_node(Op.CONST, params={"value": key}, meta=_meta(tuple(keep.shape), "bool"), **common)
    if mask is not None and mask.meta.dtype == "bool":
        attrs = {"target": "aten.where.ScalarOther", "args": [Ref(0), Ref(1), -math.inf], "kwargs": {}}
        scores = graph.add_node(Op.ATEN, [mask, scores], attrs=attrs, meta=s_meta, **common)
    elif mask is not None:
        scores = graph.add_node(Op.ADD, [scores, mask], attrs={"other": None, "alpha": 1}, meta=s_meta, **common)
    probs = graph.add_node(Op.SOFTMAX, [scores], attrs={"dim": -1}, meta=s_meta, **common)
    return graph.add_node(Op.MATMUL, [probs, v], meta=node.meta, **common)


def decompose_attention_(graph: Graph) -> bool:
    """Replace every decomposable scaled_dot_product_attention call by matmul -> softmax -> matmul."""
    changed = False
    for node in [n for n in graph.nodes if n.op is Op.ATEN and n.attrs.get("target") == SDPA_TARGET]:
        a = _call_args(node)
        if not _decomposable(a):
            continue
        out = _decompose(graph, node, a)
        graph.replace_all_uses(node, out)
        graph.remove_node(node)
        changed = True
    return changed

"""Per-op rules: can a target run this node, and if not, why. One rule per `Op` in `RULES`.

A rule sees the node, the target and the devices already given to the nodes before it (topological order), and
returns a `Verdict`: the engine that runs the node, or the reasons it cannot. `assign.py` applies them and the
original's post-processing (reshape, concat, constants).

How this differs from the original (Vitis AI 3.5): its Inspector compiles each matched pattern with the closed
`xcompiler`; ours decides from the target table alone, following the original's rule-based inspector
(`hardware/dpu_op_filter.py`, `dpu_partition.py`) and its allocator's post-processing (`device_allocator.py`):
- an activation (relu, relu6, leaky-relu, hard-sigmoid, hard-swish) runs on the DPU when it is fused into its
  producer (the producer is on the DPU, the activation is its only reader, and the producer's engine lists the
  nonlinear type), or when an ALU can run it alone (leaky-relu, hard-sigmoid, hard-swish); the compiler may
  find other fusions (e.g. through a concat);
- the ALU types of DPUCV2DX8G are read as `macc_temp` = depthwise conv and average pooling, `comp_temp` = max
  pooling, `elew_add` / `elew_mult` = eltwise add / multiply (an inference from the names; the files do not say);
- `stride_out_h`, `channel_augmentation`, pixel parallelism and the image banks' size are not checked (they
  change speed or tiling, which the compiler handles); dilation has no limit in the target files;
- tensors of more than 4 dimensions, permutes and strided slices stay on the CPU (the original's rule-based
  inspector; DPUCVDX8G's 3-D convolutions are not lowered by our exporter);
- an op our exporter writes as a custom op has "<op> can't be converted to XIR." among its reasons;
- eltwise inputs are not checked for broadcasting (as in the original's rule-based inspector); a matmul of two
  activations stays on the CPU; bilinear resize runs only at x2 / x4 (half-pixel centres, as a transposed
  depthwise conv) and nearest resize only at integer scales.
Shapes and dimensions in the reasons are PyTorch's (NCHW); kernels, strides and pads follow XIR ([w, h]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._tables import registrar
from ..ir.graph import Graph, Node, TensorMeta
from ..ir.ops import Op
from .table import Target

__all__ = [
    "RULES",
    "Context",
    "Verdict",
    "first",
    "meta_of",
    "no",
    "ok",
    "op_label",
    "pair",
    "rule",
    "shape_of",
    "verdict",
]


@dataclass(frozen=True)
class Verdict:
    reasons: tuple[str, ...] = ()
    engine: str = ""  # "conv", "dwconv", "alu", "eltwise", "pool", "fused into <node>", or "" (moves data only)

    @property
    def ok(self) -> bool:
        return not self.reasons


def ok(engine: str = "") -> Verdict:
    return Verdict((), engine)


def no(*reasons: str | None) -> Verdict:
    """The node stays on the CPU for these reasons (None entries are dropped)."""
    return Verdict(tuple(r for r in reasons if r))


def first(*results: str | None) -> str | None:
    """The first failed check of several, in the order the original checks them."""
    return next((r for r in results if r), None)


def verdict(reason: str | None, engine: str) -> Verdict:
    """DPU on `engine` when `reason` is None, else CPU for that reason."""
    return ok(engine) if reason is None else no(reason)


@dataclass
class Context:
    target: Target
    graph: Graph
    on_dpu: dict[str, bool] = field(default_factory=dict)  # decided so far
    engines: dict[str, str] = field(default_factory=dict)  # DPU node -> its engine
    outputs: frozenset[str] = frozenset()

    def dpu(self, node: Node) -> bool:
        return self.on_dpu.get(node.name, False)


Rule = Callable[[Context, Node], Verdict]
RULES: dict[Op, Rule] = {}
rule = registrar(RULES)


def meta_of(node: Node) -> TensorMeta | None:
    meta = node.meta
    if isinstance(meta, tuple):
        meta = next((m for m in meta if isinstance(m, TensorMeta)), None)
    return meta if isinstance(meta, TensorMeta) else None


def op_label(node: Node) -> str:
    """The op's name in reports: our op name, or the ATen operator for ops we do not model."""
    if node.op is Op.CUSTOM:
        return str(node.attrs["op_type"])
    return str(node.attrs.get("target", "aten")) if node.op is Op.ATEN else node.op.value


def shape_of(node: Node) -> tuple[Any, ...]:
    meta = meta_of(node)
    return meta.shape if meta is not None else ()


def pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


from . import conv_rules, op_rules  # noqa: E402, F401  (they fill RULES)

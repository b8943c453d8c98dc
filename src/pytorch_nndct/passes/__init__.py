"""Graph rewrites. A pass is `name_(graph) -> bool`: it mutates the graph and says whether it changed it.

`run_passes` verifies the graph after every pass and names the pass that broke it; `optimize` runs the
default pipeline and renumbers the nodes so their names are compact and stable.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from ..ir.graph import Graph
from ..ir.ops import Op
from ..ir.verify import GraphInvariantError, verify
from .attention import decompose_attention_
from .cleanup import remove_dead_code_, remove_dropout_, remove_identity_
from .equalize import equalization_pairs, equalize_, pair_scales, scaled_pair
from .fold_bn import bn_to_channel_scale_, fold_bn_

__all__ = [
    "DEFAULT_PASSES",
    "Pass",
    "bn_to_channel_scale_",
    "decompose_attention_",
    "equalization_pairs",
    "equalize_",
    "fold_bn_",
    "optimize",
    "pair_scales",
    "remove_dead_code_",
    "remove_dropout_",
    "remove_identity_",
    "run_passes",
    "scaled_pair",
]

log = logging.getLogger("pytorch_nndct")

Pass = Callable[[Graph], bool]

DEFAULT_PASSES: tuple[Pass, ...] = (
    remove_dropout_,
    remove_identity_,
    remove_dead_code_,
    decompose_attention_,
    fold_bn_,
    bn_to_channel_scale_,
    remove_dead_code_,
)


def run_passes(graph: Graph, passes: Sequence[Pass]) -> bool:
    """Run `passes` in order, verifying the graph after each; True if any changed it."""
    changed = False
    for p in passes:
        did = p(graph)
        try:
            verify(graph)
        except GraphInvariantError as exc:
            raise GraphInvariantError(f"pass {p.__name__} broke the graph: {exc}") from exc
        log.debug("pass %s: %s", p.__name__, "changed" if did else "no change")
        changed |= did
    return changed


def optimize(graph: Graph, passes: Sequence[Pass] = DEFAULT_PASSES) -> Graph:
    """Run the default passes on `graph` (in place) and renumber its nodes; returns the graph."""
    run_passes(graph, passes)
    graph.renumber()
    _warn_unknown_ops(graph)
    return graph


def _warn_unknown_ops(graph: Graph) -> None:
    """Name the ATen ops left in float after the passes (decomposed attention is not among them)."""
    counts = Counter(n.attrs["target"] for n in graph.nodes if n.op is Op.ATEN)
    if counts:
        listing = ", ".join(f"{t} x{c}" for t, c in sorted(counts.items()))
        log.warning(
            "%d op(s) of %s have no quantized equivalent and run in float: %s",
            sum(counts.values()),
            graph.name,
            listing,
        )

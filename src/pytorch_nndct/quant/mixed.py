"""Mixed precision by sensitivity: the few activation points that hurt the output most are kept at 16 bits.

The budget (`mixed_precision_budget`) is a count of activation points (an int >= 0) or a fraction of them (a
float in (0, 1), rounded down). Calibration then also finds every candidate point's 16-bit fix position (the
same method and statistic as its 8-bit one, on the same batches) and keeps its first `KEPT_BATCHES` batches.
At export:

1. the all-8-bit table (with the DPU constraints applied) is run on the kept batches in test mode; its error
   is the mean squared difference from the float outputs, relative to their mean square, averaged over
   output tensors and batches;
2. each candidate, alone at 16 bits, is run the same way: its gain is how much of that error it removes.
   Points whose fix positions must stay equal (`rules.fix_ties`: concat / pooling inputs under the
   change_*_input_fix flags, pad / slice / nearest-upsampling) are one candidate and count as that many points;
3. candidates are taken by gain per point, best first, while they fit the budget and help (gain > 0).

The chosen points are ordinary `[16, fix_pos]` entries of quant_info.json; its `mixed_precision` list names
them so test mode accepts their width. Only power-of-two integer points (the DPU's format) are candidates.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .table import QuantTable

__all__ = [
    "KEPT_BATCHES",
    "WIDE_BITS",
    "Pick",
    "budget_count",
    "check_budget",
    "choose",
    "describe",
    "output_error",
    "widen",
]

log = logging.getLogger("pytorch_nndct")

WIDE_BITS = 16  # the width of a point kept at higher precision
KEPT_BATCHES = 2  # calibration batches kept to measure sensitivity (bounds memory and export time)
_FIX = (
    "Fix: pass a number of activation points (an int >= 0, e.g. 4) or a fraction of them (a float between 0 "
    "and 1, e.g. 0.05)."
)


def check_budget(value: Any, where: str = "mixed_precision_budget", error: type[Exception] = InputError) -> int | float:
    """The budget as given, validated: an int >= 0 (a count) or a float in [0, 1) (a fraction)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where} = {value!r}: the budget must be a number. {_FIX}")
    if isinstance(value, int):
        if value < 0:
            raise error(f"{where} = {value}: a count of activation points cannot be negative. {_FIX}")
        return value
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise error(
            f"{where} = {value!r}: a float budget is a fraction of the activation points and must be in [0, 1). {_FIX}"
        )
    return value


def budget_count(budget: int | float, candidates: int) -> int:
    """How many points the budget allows among `candidates` points (a fraction is rounded down)."""
    if isinstance(budget, float):
        return math.floor(budget * candidates + 1e-9)
    return min(budget, candidates)


def widen(table: QuantTable, fix_pos: dict[str, int]) -> QuantTable:
    """A copy of `table` with the output points in `fix_pos` at WIDE_BITS and the given fix positions."""
    outputs = dict(table.outputs)
    for key, fp in fix_pos.items():
        outputs[key] = dataclasses.replace(outputs[key], bitwidth=WIDE_BITS, fix_pos=fp)
    widened = sorted({*table.mixed_precision, *fix_pos})
    return dataclasses.replace(table, params=dict(table.params), outputs=outputs, mixed_precision=widened)


def _tensors(value: Any) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [v for v in leaves if isinstance(v, torch.Tensor) and v.is_floating_point()]


def output_error(quantized: list[Any], reference: list[Any]) -> float:
    """Mean over batches and output tensors of mean((q - f)^2) / mean(f^2): the noise-to-signal ratio."""
    terms = []
    for q_out, f_out in zip(quantized, reference, strict=True):
        for q, f in zip(_tensors(q_out), _tensors(f_out), strict=True):
            f64 = f.detach().double()
            noise = (q.detach().double() - f64).pow(2).mean().item()
            terms.append(noise / max(f64.pow(2).mean().item(), 1e-30))
    return sum(terms) / max(len(terms), 1)


@dataclass(frozen=True)
class Pick:
    """One candidate: its points (tied fix positions), their 16-bit fix positions, and the error it removes."""

    keys: tuple[str, ...]
    fix_pos: dict[str, int]
    gain: float  # base error minus the error with these points at 16 bits

    @property
    def per_point(self) -> float:
        return self.gain / len(self.keys)


def choose(
    budget: int | float,
    groups: Iterable[tuple[str, ...]],
    wide_fix_pos: dict[str, int],
    error_of: Callable[[dict[str, int]], float],
) -> tuple[list[Pick], float, float]:
    """Pick the groups to widen: returns (picks, the all-8-bit error, the error with the picks).

    `groups` are the candidate points grouped by tied fix positions, `wide_fix_pos` each point's 16-bit fix
    position, `error_of(fix_pos)` the output error with those points widened (constraints applied).
    """
    groups = [g for g in groups if all(k in wide_fix_pos for k in g)]
    allowed = budget_count(budget, sum(len(g) for g in groups))
    if allowed == 0:
        return [], math.nan, math.nan
    base = error_of({})
    measured = []
    for group in groups:
        fps = {k: wide_fix_pos[k] for k in group}
        measured.append(Pick(group, fps, base - error_of(fps)))
    measured.sort(key=lambda p: (-p.per_point, p.keys))
    picks, used = [], 0
    for pick in measured:
        if pick.gain > 0 and used + len(pick.keys) <= allowed:
            picks.append(pick)
            used += len(pick.keys)
    final = error_of({k: fp for p in picks for k, fp in p.fix_pos.items()}) if picks else base
    return picks, base, final


def describe(picks: list[Pick], base: float, final: float, table: QuantTable) -> str:
    """A short table of the chosen points (logged at export)."""
    lines = [f"output error (noise / signal) {base:.3g} with 8-bit activations -> {final:.3g}"]
    for p in picks:
        gain = p.gain / base if base > 0 else 0.0
        tied = f" (with {len(p.keys) - 1} tied point(s))" if len(p.keys) > 1 else ""
        for k in p.keys:
            fps = f"8-bit fp {table.outputs[k].fix_pos:>3} -> 16-bit fp {p.fix_pos[k]:>3}"
            lines.append(f"  {k:<48} {fps}  gain {gain:6.1%}{tied}")
    return "\n".join(lines)

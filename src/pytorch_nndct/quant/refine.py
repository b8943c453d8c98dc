"""Output-aware refinement of the calibrated grids: each point's step against the network's output error.

Every calibration method picks a point's step from that tensor alone ("diffs": the smallest squared error of
the tensor itself; percentile: a share of its histogram). Where errors do not add up evenly (a transformer's
outlier channels feed layer norms and attention; a clipped value may matter more downstream than many small
rounding errors) the locally best step is not the best for the network. Refinement starts from the
calibrated table and, point by point in graph order, tries the neighbouring steps, keeping a move only where
it lowers the output error (quant/mixed.py's `output_error`: noise over signal of the outputs against float)
on the kept calibration batches by more than `TOLERANCE`:

- power-of-two points (the DPU's format): fix position +-1; activation outputs, per-tensor weights (a weight
  moved changes its layer's bias grid through the constraints, which every trial applies);
- float steps (CPU/GPU targets): the step times 2^(+-1/2) (per-tensor activations only; per-channel weights
  keep their max-based steps).

Points tied to one fix position (`rules.fix_ties`) move together. At most `SWEEPS` passes, stopping early
when a pass moves nothing. Cost: about 2 x points x sweeps runs of the kept batches in test mode.

The config key `output_refinement` switches it on (true) or off (false). Absent, it runs where it was
measured to pay, within a bounded cost (`auto`): networks with attention or layer norms (softmax,
layer_norm), the transformers whose outlier channels tensor-local choices serve worst, of at most
AUTO_MAX_GROUPS candidate points (all-MiniLM-L6-v2: 117, cosine 0.967 -> 0.978 on the DPU target).
Convolutional networks keep the tensor-local choice (the original's) unless asked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .scales import to_float32
from .spec import QuantSpec
from .table import QuantTable

__all__ = ["AUTO_MAX_GROUPS", "SWEEPS", "TOLERANCE", "Refinement", "auto", "candidates", "refine"]

log = logging.getLogger("pytorch_nndct")

SWEEPS = 2  # passes over the points
TOLERANCE = 1e-3  # a move must lower the output error by this share (noise on the kept batches is not signal)
FLOAT_STEP_FACTOR = 2.0**0.5  # float steps try step * / this factor
AUTO_MAX_GROUPS = 160  # `auto` refines networks of at most this many candidate points
_AUTO_OPS = frozenset({"softmax", "layer_norm"})


def auto(op_names: Iterable[str], groups: int) -> str | None:
    """Why `auto` leaves refinement off for a graph with these ops and `groups` candidate points (output
    points, tied ones counted once, and weights; decided before calibration, so that only a run that will
    refine keeps calibration batches). None: it runs."""
    if not _AUTO_OPS & set(op_names):
        return "no attention or layer norm (convolutional networks keep the tensor-local steps)"
    if groups > AUTO_MAX_GROUPS:
        return f"{groups} candidate points, more than {AUTO_MAX_GROUPS} (about {4 * groups} runs of the kept batches)"
    return None


@dataclass
class Refinement:
    """What refinement did: the output error before and after, and the points it moved (key -> steps moved)."""

    before: float = math.nan
    after: float = math.nan
    moved: dict[str, int] = dataclasses.field(default_factory=dict)
    trials: int = 0

    def describe(self) -> str:
        if not self.moved:
            return f"output error (noise / signal) {self.before:.3g}, no point moved ({self.trials} trials)"
        gain = 10 * math.log10(self.before / self.after) if self.after > 0 < self.before else math.inf
        return (
            f"output error (noise / signal) {self.before:.3g} -> {self.after:.3g} ({gain:+.2f} dB) with "
            f"{len(self.moved)} point(s) moved ({self.trials} trials)"
        )


def _refinable(spec: QuantSpec | None, output: bool) -> bool:
    if spec is None or not spec.is_int:
        return False
    if spec.float_scale:
        return output and spec.scale is not None and not spec.per_channel
    return spec.fix_pos is not None and not spec.per_channel


def candidates(table: QuantTable, groups: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The groups that can move: output groups whose points are all refinable, then per-tensor weights."""
    out = [g for g in groups if all(_refinable(table.outputs.get(k), True) for k in g)]
    out += [(k,) for k, s in table.params.items() if k.endswith("weight") and _refinable(s, False)]
    return out


def _moved(table: QuantTable, keys: tuple[str, ...], direction: int) -> QuantTable:
    """A copy of `table` with the points of `keys` one step coarser (direction -1) or finer (+1)."""
    params, outputs = dict(table.params), dict(table.outputs)
    for key in keys:
        where = params if key in params else outputs
        spec = where[key]
        if spec.float_scale:
            where[key] = dataclasses.replace(spec, scale=to_float32(spec.scale / FLOAT_STEP_FACTOR**direction))
        else:
            where[key] = spec.with_fix_pos(spec.fix_pos + direction)
    return dataclasses.replace(table, params=params, outputs=outputs)


def refine(
    table: QuantTable,
    groups: list[tuple[str, ...]],
    error_of: Callable[[QuantTable], float],
    sweeps: int = SWEEPS,
    tolerance: float = TOLERANCE,
) -> tuple[QuantTable, Refinement]:
    """Coordinate descent over `groups` (see the module docstring): returns the refined table and a record.
    `error_of(table)` runs the kept batches with `table` (constraints applied inside) and returns the error."""
    record = Refinement()
    best = record.before = error_of(table)
    record.trials = 1
    for _ in range(sweeps):
        moved_now = 0
        for keys in groups:
            for direction in _directions(record.moved.get(keys[0], 0)):
                trial = _moved(table, keys, direction)
                error = error_of(trial)
                record.trials += 1
                if error < best * (1.0 - tolerance):
                    table, best, moved_now = trial, error, moved_now + 1
                    for key in keys:
                        record.moved[key] = record.moved.get(key, 0) + direction
                    break
        if not moved_now:
            break
    record.after = best
    record.moved = {k: v for k, v in record.moved.items() if v}
    return table, record


def _directions(moved: int) -> Iterator[int]:
    """Try the direction a point already moved in first (it often moves on), never straight back."""
    if moved > 0:
        yield 1
    elif moved < 0:
        yield -1
    else:
        yield from (1, -1)

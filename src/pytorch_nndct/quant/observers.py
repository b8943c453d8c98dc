"""Observers collect; pure functions decide. An activation's fix position (or float step) is a statistic
over calibration batches."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from .scales import scale_statistic

__all__ = ["FixPosObserver", "ModeObserver", "ScaleObserver"]


class FixPosObserver:
    """Counts the fix position found on each calibration batch; `value` is the chosen statistic:
    "modal" the most frequent (the smallest among ties), "max" the smallest (it covers the largest range
    seen), "mean" the mean rounded half up, "median" the lower median."""

    def __init__(self, statistic: str = "modal") -> None:
        if statistic not in ("modal", "max", "mean", "median"):
            raise ValueError(f"unknown calibration statistic {statistic!r}")
        self.statistic = statistic
        self.counts: Counter[int] = Counter()

    def observe(self, fix_pos: int) -> None:
        self.counts[fix_pos] += 1

    @property
    def batches(self) -> int:
        return sum(self.counts.values())

    @property
    def value(self) -> int | None:
        if not self.counts:
            return None
        if self.statistic == "max":
            return min(self.counts)
        if self.statistic == "mean":
            return math.floor(sum(fp * c for fp, c in self.counts.items()) / self.batches + 0.5)
        if self.statistic == "median":
            return statistics.median_low(self.counts.elements())
        best = max(self.counts.values())
        return min(fp for fp, c in self.counts.items() if c == best)


class ModeObserver(FixPosObserver):
    """The default statistic (SPEC 2.1): the mode over batches."""

    def __init__(self) -> None:
        super().__init__("modal")


class ScaleObserver:
    """Collects the float step and zero point found on each calibration batch; `value` is their statistic
    (scales.scale_statistic): the max, mean or median step ("modal": the most frequent) and the most
    frequent zero point."""

    def __init__(self, statistic: str = "max") -> None:
        if statistic not in ("modal", "max", "mean", "median"):
            raise ValueError(f"unknown calibration statistic {statistic!r}")
        self.statistic = statistic
        self.scales: list[float] = []
        self.zero_points: list[int] = []

    def observe(self, scale: float, zero_point: int) -> None:
        self.scales.append(scale)
        self.zero_points.append(zero_point)

    @property
    def batches(self) -> int:
        return len(self.scales)

    @property
    def value(self) -> tuple[float, int] | None:
        if not self.scales:
            return None
        return scale_statistic(self.scales, self.zero_points, self.statistic)

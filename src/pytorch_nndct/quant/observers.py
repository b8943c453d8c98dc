"""Observers collect; pure functions decide. An activation's fix position is the mode over batches."""

from __future__ import annotations

from collections import Counter

__all__ = ["ModeObserver"]


class ModeObserver:
    """Counts the fix position found on each calibration batch; the value kept is the most frequent one
    (the smallest among ties)."""

    def __init__(self) -> None:
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
        best = max(self.counts.values())
        return min(fp for fp, c in self.counts.items() if c == best)

"""Quantization specs: rounding modes, the fix-point format of one tensor, and the table of all of them."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

__all__ = ["FP_CAP_NARROW", "FP_CAP_WIDE", "CalibSpec", "QuantSpec", "RoundMode", "TensorKind", "fp_cap"]

FP_CAP_NARROW = 12  # largest fix position for bit widths <= 8 (SPEC 2)
FP_CAP_WIDE = 15  # and for wider ones


class RoundMode(enum.Enum):
    """How a scaled value is rounded to an integer."""

    HALF_UP = "half_up"  # DPU round: floor(x + 0.5), ties toward +inf (activations, network inputs)
    HALF_AWAY = "std_round"  # C round: ties away from zero (weights, biases)
    HALF_EVEN = "half_even"  # banker's rounding (torch.round, ONNX QuantizeLinear)
    HALF_DOWN = "half_down"  # ties toward -inf
    FLOOR = "floor"
    CEIL = "ceil"


class TensorKind(enum.Enum):
    """What a quantized tensor is; decides its default bit width and rounding."""

    WEIGHT = "weights"
    BIAS = "bias"
    INPUT = "input"
    ACTIVATION = "activation"


def fp_cap(bitwidth: int) -> int:
    return FP_CAP_NARROW if bitwidth <= 8 else FP_CAP_WIDE


@dataclass(frozen=True)
class QuantSpec:
    """Fix-point format of one tensor: value = q * 2^-fix_pos, q a `bitwidth`-bit integer."""

    bitwidth: int = 8
    signed: bool = True
    round_mode: RoundMode = RoundMode.HALF_UP
    fix_pos: int | None = None  # None until calibrated
    float_scale: bool = False  # CPU/GPU targets: scale = max|x| / qmax (float) instead of 2^-fix_pos
    per_channel: bool = False  # with float_scale: one scale per slice along `axis` (weights: output channels)
    axis: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.bitwidth, int) or not 2 <= self.bitwidth <= 32:
            raise ValueError(f"bit width must be an integer from 2 to 32, got {self.bitwidth!r}")
        if self.fix_pos is not None and not isinstance(self.fix_pos, int):
            raise ValueError(f"fix position must be an integer or None, got {self.fix_pos!r}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bitwidth - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bitwidth - 1) - 1 if self.signed else 2**self.bitwidth - 1

    def with_fix_pos(self, fix_pos: int | None) -> QuantSpec:
        return dataclasses.replace(self, fix_pos=fix_pos)


@dataclass(frozen=True)
class CalibSpec:
    """How a fix position is found: the method on one tensor (or batch), and the statistic over batches.

    method: "diffs" (SPEC 2.1: the best of 5 candidates by squared error), "maxmin" (no clipping),
    "mse" (the best over bit-width candidates), "percentile" (no clipping of the `percentage` percentile of
    |x|). statistic (activations): "modal" (the most frequent per-batch fix position), "max" (the
    smallest, which covers the largest range seen), "mean" (rounded half up), "median" (the lower one).
    """

    method: str = "diffs"
    statistic: str = "modal"
    percentage: float = 99.99

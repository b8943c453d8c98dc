"""Quantization specs: rounding modes, data types, the format of one tensor, and how it is calibrated."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

__all__ = [
    "FP_CAP_NARROW",
    "FP_CAP_WIDE",
    "CalibSpec",
    "DataType",
    "QuantSpec",
    "RoundMode",
    "TensorKind",
    "fp_cap",
]

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


class DataType(enum.Enum):
    """The number format of a tensor: integers on a grid, or a float type the values are rounded to."""

    INT = "int"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"  # not quantized

    @property
    def is_int(self) -> bool:
        return self is DataType.INT


def fp_cap(bitwidth: int) -> int:
    return FP_CAP_NARROW if bitwidth <= 8 else FP_CAP_WIDE


@dataclass(frozen=True)
class QuantSpec:
    """Format of one tensor.

    Integer (dtype INT): value = (q - zero_point) * step with q an integer in [qmin, qmax], where the step is
    - 2^-fix_pos (power-of-two, the DPU format), or
    - a float scale (`float_scale`): `scale` once calibrated (activations, inputs), or derived from the tensor
      itself per tensor or per slice along `axis` (parameters, `per_channel`);
    - per-channel power-of-two (`per_channel` without `float_scale`): 2^-fp per slice, derived from the tensor.
    Float (bfloat16, float16): values rounded to that type; float32: not quantized.
    """

    bitwidth: int = 8
    signed: bool = True
    round_mode: RoundMode = RoundMode.HALF_UP
    fix_pos: int | None = None  # None until calibrated
    float_scale: bool = False  # CPU/GPU targets: a float step instead of 2^-fix_pos
    per_channel: bool = False  # one step per slice along `axis` (weights: output channels)
    axis: int = 0
    symmetric: bool = True  # False: a zero point (the range [0, 2^bw - 1] covers [min, max])
    narrow_range: bool = False  # signed symmetric: qmin = -2^(bw-1) + 1
    dtype: DataType = DataType.INT
    scale: float | None = None  # calibrated float step (per-tensor activations and inputs)
    zero_point: int = 0  # with `scale`

    def __post_init__(self) -> None:
        if not isinstance(self.bitwidth, int) or not 2 <= self.bitwidth <= 32:
            raise ValueError(f"bit width must be an integer from 2 to 32, got {self.bitwidth!r}")
        if self.fix_pos is not None and not isinstance(self.fix_pos, int):
            raise ValueError(f"fix position must be an integer or None, got {self.fix_pos!r}")
        if self.scale is not None and not (isinstance(self.scale, float) and self.scale > 0):
            raise ValueError(f"scale must be a positive float or None, got {self.scale!r}")

    @property
    def is_int(self) -> bool:
        return self.dtype is DataType.INT

    @property
    def derived(self) -> bool:
        """The step comes from the tensor itself (float-scale or per-channel parameters), not a stored value."""
        return self.is_int and self.scale is None and (self.float_scale or self.per_channel)

    @property
    def qmin(self) -> int:
        if self.signed and self.symmetric:
            return -(2 ** (self.bitwidth - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bitwidth - 1) - 1 if self.signed and self.symmetric else 2**self.bitwidth - 1

    def with_fix_pos(self, fix_pos: int | None) -> QuantSpec:
        return dataclasses.replace(self, fix_pos=fix_pos)

    def with_scale(self, scale: float | None, zero_point: int = 0) -> QuantSpec:
        return dataclasses.replace(self, scale=scale, zero_point=zero_point)


@dataclass(frozen=True)
class CalibSpec:
    """How a tensor's step is found: the method on one tensor (or batch), and the statistic over batches.

    Power-of-two: "diffs" (SPEC 2.1: the best of 5 candidates by squared error), "maxmin" (no clipping), "mse"
    (the best over bit-width candidates), "percentile" (no clipping of the `percentage` percentile of |x|).
    Float scales: "maxmin" (the range), "percentile", "mse", "entropy" (on a 2048-bin histogram of |x|).
    statistic (activations, inputs), power-of-two: "modal" (the most frequent per-batch fix position), "max"
    (the smallest, which covers the largest range seen), "mean" (rounded half up), "median" (the lower one);
    float scales: the max, mean or median of the per-batch scales.
    """

    method: str = "diffs"
    statistic: str = "modal"
    percentage: float = 99.99

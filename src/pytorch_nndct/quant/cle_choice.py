"""Which cross-layer equalization pairs to keep: each pair decided on calibration data.

Equalization (passes/equalize.py) balances the weight ranges of conv0 -> conv1 so that per-tensor weight
grids fit both, but it also rescales the channels of the activation between them, and the channels it
shrinks lose resolution on that tensor's per-tensor grid. On trained networks the second effect can win:
the digits CNN's depthwise -> pointwise pair lowers the weight-only error (36.7 -> 38.5 dB output SQNR with
bias correction) but raises the activation-only error (30.9 -> 30.2 dB), a net loss of 0.1-0.3 dB.

So a pair is kept only where it lowers the error of its own segment on the first calibration batch: conv0
with its weights quantized -> the ops between (ReLU, pooling) -> the activation on its calibrated grid ->
conv1 with its weights quantized, against the float segment, once with the pair's scales and once without.
Each output channel's mean error is removed before the comparison: bias correction takes it out. The choice
is made only with bias correction on. Without it, the mean errors of per-tensor weights stay, and they add
up coherently downstream (over channels, kernel windows, positions) where random errors add in power: the
local error understates them, and equalization, which shrinks them, pays more than the segment shows (the
digits CNN without bias correction: +5.2 dB from equalizing a pair whose segment error it raises by 3 %).
Every pair is equalized then, as before.

Pairs are judged one by one from the unequalized weights; the kept ones are then equalized together
(passes/equalize.equalize_).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .primitives import calibrate, fake_quantize
from .scales import batch_scale, quantize_param
from .spec import CalibSpec, QuantSpec

__all__ = ["Format", "Segment", "quantized", "segment_errors"]


@dataclass(frozen=True)
class Format:
    """How one tensor of the segment is quantized: its spec and calibration method (from the plan)."""

    spec: QuantSpec
    calib: CalibSpec


def quantized(x: torch.Tensor, fmt: Format | None) -> torch.Tensor:
    """`x` fake-quantized as calibration would: a grid derived from the tensor (per-channel or float-scale
    parameters), a float step by the calibration method, or a fix position by it."""
    if fmt is None or not fmt.spec.is_int:
        return x
    spec, calib = fmt.spec, fmt.calib
    if spec.derived:
        return quantize_param(x, spec, calib)
    if spec.float_scale:
        scale, zero_point = batch_scale(x, spec, calib)
        return fake_quantize(x, spec, scale, zero_point)
    fix_pos = calibrate(x, spec, calib)
    return x if fix_pos is None else fake_quantize(x, spec.with_fix_pos(fix_pos))


@dataclass
class Segment:
    """One pair's segment as the quantizer runs it, with the float input seen by conv0."""

    x: torch.Tensor
    conv0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x, weight, bias)
    between: Callable[[torch.Tensor], torch.Tensor]
    conv1: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, weight); its own bias
    weight0: Format | None
    weight1: Format | None
    activation: Format | None  # the point on conv1's input

    def run(self, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor, quant: bool) -> torch.Tensor:
        if not quant:
            return self.conv1(self.between(self.conv0(self.x, w0, b0)), w1)
        a = self.between(self.conv0(self.x, quantized(w0, self.weight0), b0))
        return self.conv1(quantized(a, self.activation), quantized(w1, self.weight1))


def _error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared error after each channel's (dim 1) mean error is removed."""
    e = (y - reference).double()
    if e.dim() > 1:
        e = e - e.mean(dim=[d for d in range(e.dim()) if d != 1], keepdim=True)
    return float(e.pow(2).mean())


@torch.no_grad()
def segment_errors(
    segment: Segment,
    original: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor],
    scaled: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor],
) -> tuple[float, float]:
    """The segment's squared error against float without and with the pair's scales (`original` and `scaled`
    are conv0's weight and bias and conv1's weight)."""
    reference = segment.run(*original, quant=False)
    return (
        _error(segment.run(*original, quant=True), reference),
        _error(segment.run(*scaled, quant=True), reference),
    )

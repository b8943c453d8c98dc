"""Trained quantization thresholds (TQT, Jain et al. 2019): the quantizer that quantization-aware training
learns its power-of-two steps with (VAIQ35 4.3, SPEC 2.5).

Why a quantizer of its own: post-training calibration picks each fix position once from data; TQT makes the
threshold a parameter, `log2 t`, trained by back-propagation alongside the weights. The DPU still needs a
power-of-two step, so the forward uses `ceil(log2 t)` and the gradient passes through the ceil unchanged.

Why it calls `primitives`: after training, the thresholds are exported as fix positions
`fp = b - 1 - ceil(log2 t)` and the deployable model is fake-quantized by the post-training code. The forward
here is that same `fake_quantize` with that same fix position, so what the network trained against and what
it is deployed with cannot drift apart (not even on rounding ties, which differ per tensor kind: parameters
round half away from zero, activations and inputs half up, SPEC 2).

The backward is the paper's (eqs. 7-8), with s = x / scale and r = round(s):
- dL/dx = grad where qmin <= r <= qmax, else 0 (straight-through estimator, clipped);
- dL/dlog2t = sum(grad * scale * ln2 * m), m = r - s inside the range, qmin below it, qmax above it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .primitives import ALL_ZERO_FIX_POS, fake_quantize, fix_pos_diffs, round_
from .spec import QuantSpec, RoundMode, fp_cap

__all__ = ["KINDS", "TQTFunction", "TQTQuantizer", "tqt_fix_pos", "tqt_quantize"]

KINDS = ("weight", "bias", "activation")
_LN2 = math.log(2.0)


def tqt_fix_pos(log2_t: float, bitwidth: int) -> int:
    """The fix position a threshold stands for: b - 1 - ceil(log2 t) (VAIQ35 4.3)."""
    if not math.isfinite(log2_t):
        raise ValueError(f"the log2 threshold must be finite, got {log2_t}")
    return bitwidth - 1 - math.ceil(log2_t)


def _spec(log2_t: torch.Tensor, bitwidth: int, round_mode: RoundMode) -> QuantSpec:
    if log2_t.numel() != 1:
        raise ValueError(f"the log2 threshold must have one element, got shape {tuple(log2_t.shape)}")
    fix_pos = tqt_fix_pos(float(log2_t.detach().reshape(())), bitwidth)
    return QuantSpec(bitwidth=bitwidth, round_mode=round_mode, fix_pos=fix_pos)


class TQTFunction(torch.autograd.Function):
    """y = clamp(round(x / scale), qmin, qmax) * scale with scale = 2^ceil(log2_t) / 2^(b-1).

    `apply(x, log2_t, bitwidth, round_mode)`; gradients flow to x and log2_t (none to the last two).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, log2_t: torch.Tensor, bitwidth: int, round_mode: RoundMode) -> torch.Tensor:
        spec = _spec(log2_t, bitwidth, round_mode)
        ctx.spec = spec
        ctx.save_for_backward(x)
        ctx.log2_t_meta = (log2_t.shape, log2_t.dtype)
        return fake_quantize(x, spec)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        spec: QuantSpec = ctx.spec
        # s and r exactly as quantize() forms them: scaling by 2^fp is exact, the tie rule is the spec's.
        s = x * math.ldexp(1.0, spec.fix_pos)
        r = round_(s, spec.round_mode)
        below, above = r < spec.qmin, r > spec.qmax
        inside = ~(below | above)
        grad_x = torch.where(inside, grad, torch.zeros_like(grad)) if ctx.needs_input_grad[0] else None
        grad_t = None
        if ctx.needs_input_grad[1]:
            shape, dtype = ctx.log2_t_meta
            work = torch.promote_types(torch.promote_types(x.dtype, dtype), torch.float32)
            m = torch.where(inside, r - s, torch.where(below, float(spec.qmin), float(spec.qmax))).to(work)
            scale = math.ldexp(1.0, -spec.fix_pos)  # the ceil is passed straight through: d scale / d log2_t
            total = (grad.to(work) * m).sum() * (scale * _LN2)
            grad_t = total.to(dtype).reshape(shape)
        return grad_x, grad_t, None, None


def tqt_quantize(x: torch.Tensor, log2_t: torch.Tensor, bitwidth: int, round_mode: RoundMode) -> torch.Tensor:
    """Fake-quantize x with the trainable threshold log2_t (a 1-element tensor); see TQTFunction."""
    return TQTFunction.apply(x, log2_t, bitwidth, round_mode)


def _default_round_mode(kind: str) -> RoundMode:
    return RoundMode.HALF_UP if kind == "activation" else RoundMode.HALF_AWAY


class TQTQuantizer(torch.nn.Module):
    """One tensor's trainable power-of-two quantizer (VAIQ35 4.3).

    `kind` is "weight", "bias" or "activation" (network inputs count as activations); it decides the
    rounding (half away from zero for parameters, half up for activations, unless `round_mode` is given) and
    how warmup picks the first threshold. State: parameter `log_threshold` ([1], 0.0); uint8 buffers
    `bitwidth`, `warmup_enabled` (on) and `quant_enabled` (on).

    Warmup: the first forward while warmup is enabled (and quantization on) sets log_threshold from that
    batch and turns warmup off.
    - weights, biases: log2(|mean(x)| + 3 std(x)), as the original does;
    - activations: the original runs a KL-J divergence search over a histogram of |x| (Settle et al.). We
      pick, by the squared error of the batch itself, the best of five power-of-two thresholds: the smallest
      that leaves max|x| within half a step of the grid and the four below it (the post-training "diffs"
      method, SPEC 2.1, with its fix position cap; a tie goes to the larger threshold). After the ceil the
      threshold is a power of two anyway, so only a handful of candidates exist, and the exact error of each
      costs one pass over the batch: a histogram, whose binning only approximates that error, buys nothing.
      A divergence between distributions also ignores the error magnitudes the training loss then sees, and
      this way QAT starts from the very fix position post-training calibration would pick on that batch.
      Weights keep the original's rule so that a QAT run starts where the original's would.
    - an all-zero (or entirely non-finite) batch gets the all-zero fix position of SPEC 2.1; non-finite
      values are left out of the statistics.
    """

    log_threshold: torch.nn.Parameter
    bitwidth: torch.Tensor
    warmup_enabled: torch.Tensor
    quant_enabled: torch.Tensor

    def __init__(self, bitwidth: int = 8, kind: str = "activation", round_mode: RoundMode | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if not isinstance(bitwidth, int) or not 2 <= bitwidth <= 32:
            raise ValueError(f"bit width must be an integer from 2 to 32, got {bitwidth!r}")
        self.kind = kind
        self.round_mode = _default_round_mode(kind) if round_mode is None else round_mode
        self.log_threshold = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("bitwidth", torch.tensor([bitwidth], dtype=torch.uint8))
        self.register_buffer("warmup_enabled", torch.ones(1, dtype=torch.uint8))
        self.register_buffer("quant_enabled", torch.ones(1, dtype=torch.uint8))

    @property
    def bits(self) -> int:
        return int(self.bitwidth.item())

    @property
    def fix_pos(self) -> int:
        """b - 1 - ceil(log_threshold): the fix position exported for deployment."""
        return tqt_fix_pos(float(self.log_threshold.detach().reshape(())), self.bits)

    def set_fix_pos(self, fix_pos: int) -> None:
        """Start from a known fix position (a post-training result): log_threshold = b - 1 - fp, warmup off."""
        self._set_log_threshold(float(self.bits - 1 - int(fix_pos)))
        self.warmup_enabled.fill_(0)

    def enable_quant(self) -> None:
        self.quant_enabled.fill_(1)

    def disable_quant(self) -> None:
        self.quant_enabled.fill_(0)

    def enable_warmup(self) -> None:
        self.warmup_enabled.fill_(1)

    def disable_warmup(self) -> None:
        self.warmup_enabled.fill_(0)

    def freeze(self) -> None:
        """Stop training the threshold (the original's `freeze_quant`)."""
        self.log_threshold.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not int(self.quant_enabled.item()):
            return x
        if int(self.warmup_enabled.item()):
            self._set_log_threshold(self._initial_log_threshold(x.detach()))
            self.warmup_enabled.fill_(0)
        return tqt_quantize(x, self.log_threshold, self.bits, self.round_mode)

    def _set_log_threshold(self, value: float) -> None:
        with torch.no_grad():
            self.log_threshold.fill_(value)

    def _initial_log_threshold(self, x: torch.Tensor) -> float:
        bits = self.bits
        x = x[torch.isfinite(x)] if not bool(torch.isfinite(x).all()) else x.reshape(-1)
        # An empty or all-zero tensor: the fix position post-training calibration gives it (SPEC 2.1).
        zero = float(bits - 1 - min(ALL_ZERO_FIX_POS, fp_cap(bits)))
        if x.numel() == 0 or not bool(x.any()):
            return zero
        if self.kind == "activation":
            spec = QuantSpec(bitwidth=bits, round_mode=self.round_mode)
            return float(bits - 1 - fix_pos_diffs(x, spec))
        x = x.double()
        std = float(x.std()) if x.numel() > 1 else 0.0
        threshold = abs(float(x.mean())) + 3.0 * std
        return math.log2(threshold) if threshold > 0.0 else zero

    def extra_repr(self) -> str:
        return f"bitwidth={self.bits}, kind={self.kind!r}, round_mode={self.round_mode.value}"

"""Bias correction during calibration (SPEC 2.5): remove the mean shift quantization adds to each layer.

Quantization shifts the mean of a layer's output: weight rounding, clipping, and the DPU's round-half-up
at activations (ties are common with power-of-two scales: an add of two values at fix position 6 written
at fix position 5 is a tie for half of its elements, always rounded up). The shifts add up layer after
layer; on random-weight ResNet-18 they cost about 10 dB of output SQNR.

On every calibration batch the float model runs first, on part of the batch, and records the
per-channel mean of each conv/linear output. The quantized pass then compares its own per-channel means
on the same samples (with the corrections of earlier layers already applied in this pass, so each layer
corrects only what is left) and moves the layer's correction to the running average of what would have
cancelled the difference. Corrections are added to the layer's bias before it is quantized, so the
deployed model carries them at no cost.

Only positions that reach the model's output count. A sentence padded to 32 tokens has most of its
positions masked out of attention and pooling; their values change nothing, yet their errors would
dominate the statistics (on all-MiniLM-L6-v2 the corrections chased the padding: cosine similarity to
the float embeddings 0.53 with them, 0.92 with bias correction off, 0.93 now). The float pass finds
them: it runs with gradients and takes the gradient of a random projection of the outputs with respect
to every corrected layer's output; a position whose gradient is exactly zero does not reach the output.
When no layer has such a position on the first batch (a CNN), the later batches skip the gradient.

A guard keeps a correction only where it helps (`LayerCorrection`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BiasCorrector", "LayerCorrection", "float_slice"]

log = logging.getLogger("pytorch_nndct")


MIN_FLOAT_SAMPLES = 16  # the float pass sees at least this many samples of a batch (all of a smaller one)


def float_slice(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The first quarter of the batch, but at least `MIN_FLOAT_SAMPLES` (or the whole batch), of every tensor
    input: the samples whose per-channel means the corrections are fitted to. (Four samples, a quarter of
    a batch of 16, made the corrections noise: DigitsNet calibrated on four different sets of 16 digits
    gave 28.5 to 29.5 dB with them, 29.7 to 31.1 dB with all 16.)

    Inputs whose tensors do not share one leading size are returned whole.
    """
    leaves = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    sizes = {t.shape[0] for t in leaves if t.dim() > 0}
    if len(sizes) != 1:
        return args, kwargs
    (batch,) = sizes
    k = max(batch // 4, min(batch, MIN_FLOAT_SAMPLES))
    if k == batch:
        return args, kwargs
    return torch.utils._pytree.tree_map(
        lambda t: t[:k] if isinstance(t, torch.Tensor) and t.dim() > 0 else t, (args, kwargs)
    )


ABS_TOLERANCE = 1.05  # a kept correction may raise the absolute error by at most 5 %


class LayerCorrection:
    """The correction of one conv/linear layer: a per-channel tensor added to its bias.

    `candidate` is the running average of what would cancel the layer's mean error; `value` is what the
    bias carries: the candidate on the channels where it has proved to help. On every batch, before the
    batch moves the candidate, the candidate is scored on that batch (data it was not fitted on): the
    squared and the absolute error of the layer's output with and without it, per channel, on a fixed
    sample of positions. A channel keeps its correction where it lowers the squared error without raising
    the absolute error by more than `ABS_TOLERANCE`. A mean shift from rounding moves nearly every value
    the same way, so the correction brings them all closer; a mean shift that comes from a few clipped or
    broken values (an outlier token) lowers the squared error too, but moves every other value away and
    raises the absolute error, and is refused. (The absolute error alone refused useful corrections of
    4-bit weights: DigitsNet W4 loss 0.088 against 0.083; the squared error alone accepted the outliers:
    all-MiniLM-L6-v2 cosine 0.21.)
    """

    SAMPLE_ROWS = 4096  # positions per batch scored by the guard

    def __init__(self, key: str, channel_dim: int) -> None:
        self.key = key  # the bias parameter's state-dict name
        self.channel_dim = channel_dim  # 1 for conv outputs (N, C, ...), -1 for linear outputs (..., C)
        self.value: torch.Tensor | None = None  # the correction the bias carries
        # c -> q(b + c) - b, what the quantized bias adds with correction c (None: c itself, no grid)
        self.grid_shift: Callable[[torch.Tensor | None], torch.Tensor | None] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the fit (the weights changed): calibration starts over."""
        self.value = None
        self.batches = 0
        self.candidate: torch.Tensor | None = None
        # per channel, summed over held-out positions: |error| and error^2 with the candidate and without
        self.abs_with = self.abs_without = self.sq_with = self.sq_without = None
        self._float: tuple | None = None  # (shape, means, means of the first half, sampled rows, live rows)

    def as_rows(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (this layer's output, or a tensor laid out like it) as rows of channels, one per position."""
        return t.detach().movedim(self.channel_dim % t.dim(), -1).reshape(-1, t.shape[self.channel_dim])

    def _rows(self, y: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """The positions of `y` that reach the output (`live`), as float rows of channels."""
        rows = self.as_rows(y)
        return (rows if live is None else rows[live]).float()

    def _grid(self, correction: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """What the quantized bias adds to the float bias with `correction` (a tensor like `like`): q(b + c) - b,
        or c itself where the grid is not known."""
        shift = self.grid_shift(correction) if self.grid_shift is not None else None
        if shift is not None:
            return shift.to(like.device, like.dtype)
        return torch.zeros_like(like) if correction is None else correction.to(like.device, like.dtype)

    def _sample(self, rows: torch.Tensor) -> torch.Tensor:
        """A fixed sample of the rows, the ones the guard scores."""
        return rows[:: max(1, rows.shape[0] // self.SAMPLE_ROWS)]

    def record_float(self, y: torch.Tensor, live: torch.Tensor | None = None) -> None:
        """The float pass's output of the layer; `live`: which rows (positions) reach the model's output."""
        if live is not None and not bool(live.any()):
            self._float = None
            return
        rows = self._rows(y, live)
        half = rows.shape[0] // 2
        self._float = (y.shape, rows.mean(0), rows[:half].mean(0) if half else None, self._sample(rows), live)

    def update(self, y: torch.Tensor) -> torch.Tensor:
        """Quantized pass: score the candidate, move it, return `y` with the change of `value` applied."""
        if self._float is None:
            return y
        shape, float_means, float_first, float_rows, live = self._float
        self._float = None
        part = _same_samples(y, shape)
        if part is None:
            return y
        applied = self.value
        rows = self._rows(part, live)  # the quantized output, its bias on the grid with `applied` added
        # the error with the float bias: what is left for a correction; the quantized bias then adds
        # grid(c) = q(b + c) - b (a correction can move the bias only on the bias's grid)
        carried = self._grid(applied, rows[0])
        rows = rows - carried
        bare = self._sample(rows) - float_rows
        residual = rows.mean(0) - float_means
        if not bool(torch.isfinite(residual).all()):
            return y
        if self.candidate is None:
            self.candidate = torch.zeros_like(residual)
            self.abs_with, self.abs_without = torch.zeros_like(residual), torch.zeros_like(residual)
            self.sq_with, self.sq_without = torch.zeros_like(residual), torch.zeros_like(residual)
        # score on the second half of this batch's positions a candidate fitted on the batches before and the
        # first half (so a single calibration batch is scored too)
        half = rows.shape[0] // 2
        trial = self.candidate
        if half and float_first is not None:
            first = rows[:half].mean(0) - float_first
            trial = self.candidate - (first + self.candidate) / (self.batches + 1)
        held = bare[bare.shape[0] // 2 :]
        with_trial, without = self._grid(trial, trial), self._grid(None, trial)
        self.abs_with += (held + with_trial).abs().sum(0)
        self.abs_without += (held + without).abs().sum(0)
        self.sq_with += (held + with_trial).square().sum(0)
        self.sq_without += (held + without).square().sum(0)
        self.batches += 1
        self.candidate.sub_((residual + self.candidate) / self.batches)
        helps = (self.sq_with < self.sq_without) & (self.abs_with < self.abs_without * ABS_TOLERANCE)
        kept = torch.where(helps, self.candidate, torch.zeros_like(residual))
        change = self._grid(kept, kept) - carried
        if self.value is None:
            self.value = kept
        else:  # in place: quantized biases are cached by the identity and version of the correction
            self.value.copy_(kept)
        view = [1] * y.dim()
        view[self.channel_dim % y.dim()] = -1
        change = change.to(y.dtype).view(view)
        return y + change if y.requires_grad else y.add_(change)


def _same_samples(y: torch.Tensor, float_shape: torch.Size) -> torch.Tensor | None:
    """`y` cut to the samples the float pass saw: the one dimension where the shapes differ."""
    if y.shape == float_shape:
        return y
    if y.dim() != len(float_shape):
        return None
    differ = [d for d in range(y.dim()) if y.shape[d] != float_shape[d]]
    if len(differ) != 1 or float_shape[differ[0]] > y.shape[differ[0]]:
        return None
    return y.narrow(differ[0], 0, float_shape[differ[0]])


class BiasCorrector:
    """All layer corrections of one model, and the phase of the current forward pass."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerCorrection] = {}  # bias key -> correction
        self.phase: str | None = None  # "float" while the reference slice runs, "quant" after, None otherwise
        self.find_live = True  # whether the float pass looks for positions that do not reach the output
        self._seen: list[tuple[LayerCorrection, torch.Tensor, torch.Tensor]] = []

    def hook(self, layer: LayerCorrection) -> Any:
        def seen(y: torch.Tensor) -> torch.Tensor:
            if self.phase == "float":
                if not self.find_live or not y.is_floating_point():
                    layer.record_float(y)
                    return y
                probe = torch.zeros_like(y, requires_grad=True)
                self._seen.append((layer, y.detach(), probe))
                return y + probe
            if self.phase == "quant":
                return layer.update(y)
            return y

        return seen

    def reference(self, run: Any) -> None:
        """Run the float pass `run()` (returns the model's output) and record every layer's reference."""
        self._seen = []
        try:
            if not self.find_live:
                with torch.no_grad():
                    run()
                return
            try:
                with torch.enable_grad():
                    self._record_live(run())
                return
            except RuntimeError as exc:  # e.g. an in-place update autograd refuses: count every position
                log.info("bias correction counts every position (no gradient: %s)", exc)
            self._seen, self.find_live = [], False
            with torch.no_grad():
                run()
        finally:
            self._seen = []

    def _record_live(self, out: Any) -> None:
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
        probes = [p for _, _, p in self._seen]
        grads: list[torch.Tensor | None] = [None] * len(probes)
        if leaves and probes:
            gen = torch.Generator(device=leaves[0].device).manual_seed(0)
            target = sum((t.float() * torch.randn(t.shape, generator=gen, device=t.device)).sum() for t in leaves)
            grads = list(torch.autograd.grad(target, probes, allow_unused=True))
        dead = False
        for (layer, y, _), grad in zip(self._seen, grads, strict=True):
            live = None
            if grad is not None:
                live = layer.as_rows(grad).abs().sum(1) > 0
                dead |= not bool(live.all())
            layer.record_float(y, live)
        self.find_live = dead  # no position is dead: later batches skip the gradient

    def values(self) -> dict[str, torch.Tensor]:
        """The corrections found so far, by bias key (on the CPU)."""
        return {k: c.value.detach().cpu().clone() for k, c in self.layers.items() if c.value is not None}

    @staticmethod
    def describe(values: dict[str, torch.Tensor]) -> str:
        if not values:
            return "no layer corrected"
        largest = max(float(v.abs().max()) for v in values.values())
        return f"{len(values)} layer(s) corrected, largest change {largest:.3g}"

"""The quantization points attached to a generated module, and the mode they run in.

A generated module's submodules call `self.nndct_out(value)` on their output and
`self.nndct_param(name, tensor)` on their parameters when those hooks are set; `attach` sets them from a
QuantPlan. The points share one `QuantState`, whose mode decides what they do:
- FLOAT: nothing;
- CALIB: find this batch's fix position (or float step), keep the statistic over batches, and fake-quantize
  with the current value so later layers see quantized inputs;
- TEST: fake-quantize with the loaded (or calibrated) value.
Points of a float data type round to it in both modes; parameters whose grid comes from the tensor itself
(float steps, per-channel) compute it whenever the tensor changes. `calibrated.table_from_points` reads the
calibrated values into a QuantTable, `calibrated.load_table` sets them from one.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.graph import Graph
from ..ir.ops import CONV_OPS, Op
from . import kernels
from .bias_corr import BiasCorrector, LayerCorrection
from .dpu import DPU_FUNCTIONS
from .observers import FixPosObserver, ScaleObserver
from .plan import QuantPlan
from .primitives import calibrate, fake_cast, fake_quantize, int32_bias, quantize, value_range
from .scales import batch_scale, param_grid, quantize_param
from .spec import CalibSpec, QuantSpec

__all__ = [
    "ActPoint",
    "Mode",
    "ParamQuant",
    "QuantState",
    "attach",
    "attach_bias_correction",
]

log = logging.getLogger("pytorch_nndct")


class Mode(enum.Enum):
    FLOAT = 0
    CALIB = 1
    TEST = 2
    QAT = 3  # quantization-aware training: points run their trained-threshold quantizers (quant/qat.py)


@dataclass
class QuantState:
    """Shared by all points of one quantized model."""

    mode: Mode = Mode.FLOAT
    warned: set[str] = field(default_factory=set)
    calibrated: bool = False  # a point saw a calibration batch

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)


class ActPoint:
    """The quantization point on one op's output (an activation or a network input)."""

    def __init__(self, key: str, spec: QuantSpec, state: QuantState, calib: CalibSpec | None = None) -> None:
        self.key = key
        self.spec = spec
        self.state = state
        self.calib = calib or CalibSpec()
        self.observer: FixPosObserver | ScaleObserver = (
            ScaleObserver(self.calib.statistic)
            if spec.is_int and spec.float_scale
            else FixPosObserver(self.calib.statistic)
        )
        self.fix_pos: int | None = None  # loaded or exported value (test mode)
        self.scale: tuple[float, int] | None = None  # float steps: loaded (step, zero point) (test mode)
        self.fused_clamp: tuple[float, float] | None = None  # a ReLU/ReLU6 this point applies itself
        # mixed precision: the wider spec this point may get, and its fix positions found in calibration
        self.wide: tuple[QuantSpec, FixPosObserver] | None = None
        self.tqt: torch.nn.Module | None = None  # quantization-aware training: its TQT quantizer (quant/qat.py)

    def watch_wide(self, bitwidth: int) -> None:
        """In calibration, also find the fix position this point would have at `bitwidth` (same method and
        statistic, same batches): quant/mixed.py widens the most sensitive points at export."""
        self.wide = (dataclasses.replace(self.spec, bitwidth=bitwidth), FixPosObserver(self.calib.statistic))

    def use_observed(self) -> None:
        """Take the calibration statistic so far as the test-mode value (fix position or float step)."""
        if self.spec.is_int and self.spec.float_scale:
            self.scale = self.observer.value
        elif self.spec.is_int:
            self.fix_pos = self.observer.value

    def step(self) -> float | None:
        """The step of this point's integer grid in the current mode (None: float type or not calibrated)."""
        if not self.spec.is_int:
            return None
        if self.spec.float_scale:
            value = self.scale if self.state.mode is Mode.TEST else self.observer.value
            return None if value is None else value[0]
        fp = self.fix_pos if self.state.mode is Mode.TEST else self.observer.value
        return None if fp is None else math.ldexp(1.0, -fp)

    def fused_bounds(self, fix_pos: int) -> tuple[int, int] | None:
        """Integer bounds that apply `fused_clamp` exactly inside the fake-quantization, or None."""
        if self.fused_clamp is None:
            return None
        lo, hi = (v * 2.0**fix_pos for v in self.fused_clamp)
        if not (lo.is_integer() and (hi == math.inf or hi.is_integer())):
            return None
        return max(self.spec.qmin, int(lo)), min(self.spec.qmax, int(hi) if hi != math.inf else self.spec.qmax)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.state.mode
        if mode is Mode.FLOAT or not x.is_floating_point():
            return x
        if mode is Mode.QAT:
            if self.fused_clamp is not None:  # the ReLU/ReLU6 ends this group: quantize what it lets through
                x = x.clamp(*self.fused_clamp)
            return x if self.tqt is None else self.tqt(x)
        if mode is Mode.CALIB:
            self.state.calibrated = True
        if not self.spec.is_int or self.spec.float_scale:
            if self.fused_clamp is not None:  # in calibration the module left its ReLU to this point
                x = x.clamp(*self.fused_clamp)
            return fake_cast(x, self.spec.dtype) if not self.spec.is_int else self._float_step(x)
        if mode is Mode.CALIB:
            clamp = self.fused_clamp
            if clamp is not None and self.calib.method not in _CLAMP_AWARE_METHODS:
                x, clamp = x.clamp(*clamp), None
            lo, hi = value_range(x)
            if clamp is not None:  # the module left its ReLU/ReLU6 to this point: observe clamp(x)
                lo, hi = (min(max(v, clamp[0]), clamp[1]) for v in (lo, hi))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                self.state.warn_once(self.key, "%s holds inf or nan; it is not quantized", self.key)
                return x if clamp is None else x.clamp(*clamp)
            # the fix position in use is usually the one before this batch: fake-quantize with it in the
            # same pass as the search, and keep that output if the batch did not change it
            guess = self.observer.value
            needs_grad = torch.is_grad_enabled() and x.requires_grad  # the compiled kernels run without autograd
            output = kernels.FusedOutput(guess) if guess is not None and not needs_grad else None
            errors = functools.partial(kernels.diffs_errors, clamp=clamp, output=output)
            self.observer.observe(calibrate(x, self.spec, self.calib, errors, (lo, hi)))
            if self.wide is not None:
                wide_x = x if clamp is None else x.clamp(*clamp)
                self.wide[1].observe(calibrate(wide_x, self.wide[0], self.calib, value_range_=(lo, hi)))
            current = self.observer.value
            if output is not None and output.value is not None and current == guess:
                return output.value.view(x.shape)
            if clamp is not None:
                return self._clamped_fake_quantize(x, current)
        else:
            current = self.fix_pos
            if current is None:
                return x
            if self.fused_clamp is not None:
                return self._clamped_fake_quantize(x, current)
        return kernels.fake_quantize(x, self.spec.with_fix_pos(current))

    def _float_step(self, x: torch.Tensor) -> torch.Tensor:
        """Float steps: observe this batch's (step, zero point) in calibration; fake-quantize with the current
        statistic (calibration) or the loaded value (test)."""
        if self.state.mode is Mode.CALIB:
            lo, hi = value_range(x)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                self.state.warn_once(self.key, "%s holds inf or nan; it is not quantized", self.key)
                return x
            self.observer.observe(*batch_scale(x, self.spec, self.calib, (lo, hi)))
            value = self.observer.value
        else:
            value = self.scale
        return x if value is None else fake_quantize(x, self.spec, *value)

    def _clamped_fake_quantize(self, x: torch.Tensor, fix_pos: int) -> torch.Tensor:
        """fake_quantize(clamp(x)) for the fused ReLU/ReLU6: in one pass where its bounds are on the grid."""
        bounds = self.fused_bounds(fix_pos)
        if bounds is None and self.fused_clamp is not None:
            x = x.clamp(*self.fused_clamp)
        return kernels.fake_quantize(x, self.spec.with_fix_pos(fix_pos), bounds)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._quantize(value)
        if isinstance(value, list | tuple):
            return type(value)(self._quantize(v) if isinstance(v, torch.Tensor) else v for v in value)
        return value


class ParamQuant:
    """Fake-quantizes a module's parameters; calibrated once, cached while the tensor is unchanged."""

    def __init__(self, state: QuantState) -> None:
        self.state = state
        self.specs: dict[str, QuantSpec] = {}  # attribute name -> spec (fix_pos set once calibrated)
        self.calibs: dict[str, CalibSpec] = {}  # attribute name -> how its fix position is found
        self.keys: dict[str, str] = {}  # attribute name -> parameter state-dict name
        self.corrections: dict[str, LayerCorrection] = {}  # attribute name -> bias correction (added when quantized)
        self.overrides: dict[str, torch.Tensor] = {}  # attribute name -> fast-finetuned value (used when quantized)
        self._cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        self._bases: dict[str, torch.Tensor] = {}  # attribute name -> its float value under a correction (last call)
        # float-scale weights: the bias goes on the grid input step x channel weight scale, as an int32
        # bias does in integer kernels (onnxruntime); `input_step` gives the input point's step
        self.input_step: Callable[[], float | None] | None = None
        self._weight: torch.Tensor | None = None  # this call's weight (before quantization)
        self._int_weights: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # stamp, integers, scales
        self._int_bias: torch.Tensor | None = None  # this call's bias divided by the channel scales
        self.tqt: dict[str, torch.nn.Module] = {}  # attribute name -> its TQT quantizer (quant/qat.py)

    def add(self, attr: str, key: str, spec: QuantSpec, calib: CalibSpec | None = None) -> None:
        self.specs[attr] = spec
        self.keys[attr] = key
        self.calibs[attr] = calib or CalibSpec()

    def __call__(self, attr: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or self.state.mode is Mode.FLOAT or attr not in self.specs:
            return tensor
        if self.state.mode is Mode.QAT:
            quantizer = self.tqt.get(attr)
            return tensor if quantizer is None else quantizer(tensor)
        out = self._quantized(attr, tensor)
        if self.input_step is None:
            return out
        if attr == "weight":
            self._weight = self.overrides.get("weight", tensor).detach()
            self._int_bias = None
        elif attr == "bias" and (step_x := self.input_step()) is not None and self._weight is not None:
            q32, step = int32_bias(out, self._integer_weights()[1], step_x)
            self._int_bias = (q32 * step_x).to(out.dtype)
            out = (q32 * step).to(out.dtype)
        return out

    def _integer_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This call's float-scale weight as (integers minus zero point, channel scales), cached while it is
        unchanged."""
        w, spec = self._weight, self.specs["weight"]
        stamp = (w.data_ptr(), w._version, w.device)
        if self._int_weights is None or self._int_weights[0] != stamp:
            scale, zero_point = param_grid(w, spec, self.calibs["weight"])
            q = quantize(w, spec, scale, zero_point) - zero_point.to(w.device, w.dtype)
            self._int_weights = (stamp, q, scale.to(w.device).reshape(-1))
        return self._int_weights[1], self._int_weights[2]

    def integer_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """Float-scale weights, once this call's weight and bias went through: (integer weights, channel
        scales, bias / channel scale). conv(x, q, b / s) * s accumulates on the input's grid and rounds once,
        as an integer kernel does; conv(x, q * s, b) would round every product."""
        if self.state.mode is Mode.FLOAT or self.input_step is None or self._weight is None:
            return None
        if self.input_step() is None:
            return None
        q, s = self._integer_weights()
        return q, s.to(q.dtype), self._int_bias

    def _quantized(self, attr: str, tensor: torch.Tensor) -> torch.Tensor:
        spec = self.specs[attr]
        override = self.overrides.get(attr)
        if override is not None:
            tensor = override.to(tensor.device, tensor.dtype) if override.device != tensor.device else override
        corr = self.corrections.get(attr)
        corr_value = corr.value if corr is not None else None
        if corr is not None:
            self._bases[attr] = tensor.detach()
        stamp = (tensor.data_ptr(), tensor._version, tensor.device, spec.fix_pos)
        if corr_value is not None:
            stamp += (id(corr_value), corr_value._version)
            tensor = tensor + corr_value.to(tensor.device, tensor.dtype)
        recalibrate = corr_value is not None and self.state.mode is Mode.CALIB  # the bias moves with its correction
        if not spec.is_int or spec.derived:
            return self._derived(attr, tensor, stamp)
        if spec.fix_pos is None or recalibrate:
            if self.state.mode is not Mode.CALIB:
                return tensor
            spec = spec.with_fix_pos(calibrate(tensor.detach(), spec, self.calibs[attr]))
            self.specs[attr] = spec
        if torch.is_grad_enabled() and tensor.requires_grad:
            return _ste(tensor, spec)  # never cached: each step needs its own autograd graph
        stamp = (*stamp[:3], spec.fix_pos, *stamp[4:])
        cached = self._cache.get(attr)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        out = fake_quantize(tensor.detach(), spec)
        self._cache[attr] = (stamp, out)
        return out

    def grid_shift(self, attr: str, correction: torch.Tensor | None) -> torch.Tensor | None:
        """q(b + c) - b: what the quantized parameter `attr` with `correction` c adds to the float value b it
        had in the last call (None before any call). Calibration mode: the fix position is found for b + c,
        as `_quantized` does. An int32 bias on the input's grid (float-scale weights) rounds too finely to
        matter: c."""
        base = self._bases.get(attr)
        if base is None:
            return None
        spec, calib = self.specs[attr], self.calibs[attr]
        target = base if correction is None else base + correction.to(base.device, base.dtype)
        if self.input_step is not None and attr == "bias":
            return target - base
        if not spec.is_int or spec.derived:
            return quantize_param(target, spec, calib) - base
        fix_pos = calibrate(target, spec, calib) if self.state.mode is Mode.CALIB else spec.fix_pos
        if fix_pos is None:
            return target - base
        return fake_quantize(target, spec.with_fix_pos(fix_pos)) - base

    def _derived(self, attr: str, tensor: torch.Tensor, stamp: tuple) -> torch.Tensor:
        """A float data type, or a grid computed from the tensor itself (the same in every mode)."""
        spec = self.specs[attr]
        if torch.is_grad_enabled() and tensor.requires_grad:
            return _ste(tensor, spec, self.calibs[attr])
        cached = self._cache.get(attr)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        out = quantize_param(tensor.detach(), spec, self.calibs[attr])
        self._cache[attr] = (stamp, out)
        return out


def _ste(tensor: torch.Tensor, spec: QuantSpec, calib: CalibSpec | None = None) -> torch.Tensor:
    """Fake-quantize with a straight-through gradient, so the quantized model can still be trained."""
    return tensor + (quantize_param(tensor.detach(), spec, calib or CalibSpec()) - tensor.detach())


def _dpu_wrapper(state: QuantState, float_fn: Callable, dpu_fn: Callable) -> Callable:
    def run(*args: Any, **kwargs: Any) -> Any:
        return float_fn(*args, **kwargs) if state.mode is Mode.FLOAT else dpu_fn(*args, **kwargs)

    return run


_FUSED_CLAMPS = {Op.RELU: (0.0, math.inf), Op.RELU6: (0.0, 6.0)}
# calibration methods that observe clamp(x) without writing it (the others get the clamped tensor)
_CLAMP_AWARE_METHODS = ("diffs", "mse", "maxmin")


def _fused_activation(state: QuantState, fn: Callable, point: ActPoint) -> Callable:
    """A ReLU/ReLU6 left to its output point, which clamps on the way (one memory pass less): in calibration
    always (the point observes and fake-quantizes the clamped values), in test mode where the clamp is exact
    inside the fake-quantization (its bounds on the grid)."""

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not args:
            if state.mode is Mode.CALIB:
                return x
            if state.mode is Mode.TEST and point.fix_pos is not None and point.fused_bounds(point.fix_pos) is not None:
                return x
        return fn(x, *args, **kwargs)

    return run


def attach(model: torch.nn.Module, graph: Graph, plan: QuantPlan, state: QuantState) -> dict[str, Any]:
    """Set the quantization hooks of a generated module (module_k is graph.nodes[k]).

    Returns the points by key: ActPoint for outputs (node names), ParamQuant for parameters (their names).
    """
    points: dict[str, Any] = {}
    index = {node.name: k for k, node in enumerate(graph.nodes)}
    for name, spec in plan.outputs.items():
        sub = getattr(model, f"module_{index[name]}", None)
        if sub is None:
            log.warning("%s has no module to quantize its output; it stays float", name)
            continue
        sub.nndct_out = points[name] = ActPoint(name, spec, state, plan.calibs.get(name))
    by_node: dict[str, ParamQuant] = {}
    for p in plan.params:
        sub = getattr(model, f"module_{index[p.node]}")
        pq = by_node.get(p.node)
        if pq is None:
            pq = by_node[p.node] = ParamQuant(state)
            sub.nndct_param = pq
        pq.add(p.role, p.key, p.spec, p.calib)
        points[p.key] = pq
    for node in graph.nodes:
        w_key = node.params.get("weight")
        pq, x_key = points.get(w_key), plan.tensor_point.get(node.inputs[0].name) if node.inputs else None
        x_point = points.get(x_key) if x_key is not None else None
        w_spec = pq.specs["weight"] if isinstance(pq, ParamQuant) else None
        if w_spec is not None and w_spec.is_int and w_spec.float_scale and isinstance(x_point, ActPoint):
            pq.input_step = x_point.step
            sub = getattr(model, f"module_{index[node.name]}", None)
            if sub is not None and hasattr(sub, "nndct_int"):
                sub.nndct_int = pq.integer_view
    for k, node in enumerate(graph.nodes):
        point, sub = points.get(node.name), getattr(model, f"module_{k}", None)
        if node.op in _FUSED_CLAMPS and isinstance(point, ActPoint) and sub is not None and hasattr(sub, "_fn"):
            point.fused_clamp = _FUSED_CLAMPS[node.op]
            sub._fn = _fused_activation(state, sub._fn, point)
    for k, node in enumerate(graph.nodes):
        dpu = DPU_FUNCTIONS.get(node.op)
        sub = getattr(model, f"module_{k}", None)
        if node.name in plan.float_ops:  # computed on the host in float, not the DPU's way
            continue
        if dpu is not None and sub is not None and hasattr(sub, "_fn"):
            sub._fn = _dpu_wrapper(state, sub._fn, dpu)
            if node.op.value == "leaky_relu" and node.attrs.get("negative_slope") != 26 / 256:
                log.warning(
                    "%s has LeakyReLU slope %s; the DPU uses 0.1015625 (26/256) when quantized",
                    node.where(),
                    node.attrs.get("negative_slope"),
                )
    return points


def attach_bias_correction(model: torch.nn.Module, graph: Graph, points: dict[str, Any]) -> BiasCorrector:
    """Give every quantized conv/linear with a bias a correction (zero until calibration or loading sets it)."""
    corrector = BiasCorrector()
    for k, node in enumerate(graph.nodes):
        if node.op not in CONV_OPS and node.op is not Op.LINEAR:
            continue
        key = node.params.get("bias")
        pq = points.get(key) if key is not None else None
        sub = getattr(model, f"module_{k}", None)
        if not isinstance(pq, ParamQuant) or sub is None or not hasattr(sub, "nndct_seen"):
            continue
        layer = corrector.layers[key] = LayerCorrection(key, -1 if node.op is Op.LINEAR else 1)
        pq.corrections["bias"] = layer
        layer.grid_shift = functools.partial(pq.grid_shift, "bias")
        sub.nndct_seen = corrector.hook(layer)
    return corrector

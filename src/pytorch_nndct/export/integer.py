"""An integer-only run of the deploy graph: what the DPU computes, with no floating point in its layers.

A value is either an integer tensor `q` with an exponent `e` (value = q * 2^-e), or a float tensor for the
ops the DPU leaves to the host (sigmoid, softmax, ...). Convolutions and matmuls accumulate exact
integers (int8 x int8 products summed in float64, exact below 2^53), biases are aligned by shifts,
average pooling multiplies the window sum by M and shifts by S, and every `fix` requantizes with the
DPU's round-half-up shift. Where the simulation is exact too, the two agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._tables import registrar
from ..errors import NndctError
from ..quant.dpu import HSIGMOID_M, HSIGMOID_S
from ..quant.primitives import avgpool_factor, quantize
from ..quant.spec import QuantSpec, RoundMode
from .deploy import DeployGraph, XOp
from .reference import EXECUTORS as FLOAT_EXECUTORS
from .reference import _nchw, _nhwc, _pool_args, _Run, _torch_pads, mirror_pad, strided_slice

__all__ = ["IntValue", "run_integer"]


@dataclass
class IntValue:
    """q * 2^-e with q an integer-valued float64 tensor (exact for |q| < 2^53)."""

    q: torch.Tensor
    e: int

    def at(self, e: int) -> torch.Tensor:
        """q expressed at a larger exponent (an exact left shift)."""
        if e < self.e:
            raise NndctError("internal: an integer value can only be shifted left exactly")
        return self.q * float(2 ** (e - self.e))

    def to_float(self) -> torch.Tensor:
        return (self.q * math.ldexp(1.0, -self.e)).to(torch.float32)


Value = IntValue | torch.Tensor


def _requantize(v: Value, bw: int, fp: int) -> IntValue:
    """The DPU's fix: round half up to the grid 2^-fp (an arithmetic shift right), then saturate.

    q * 2^-e is exact in float64 for the integers here, so the primitive's rounding is the DPU's shift.
    """
    x = v.q * math.ldexp(1.0, -v.e) if isinstance(v, IntValue) else v.double()
    return IntValue(quantize(x, QuantSpec(bw, True, RoundMode.HALF_UP, fp)), fp)


def _align(values: list[IntValue]) -> tuple[list[torch.Tensor], int]:
    e = max(v.e for v in values)
    return [v.at(e) for v in values], e


IntExecutor = Callable[[XOp, dict[str, Value], _Run], Value]
INT_EXECUTORS: dict[str, IntExecutor] = {}


_int_op = registrar(INT_EXECUTORS)


def _ints(op: XOp, env: dict[str, Value], arg: str = "input") -> list[IntValue]:
    vals = [env[n] for n in op.args.get(arg, [])]
    if not all(isinstance(v, IntValue) for v in vals):
        raise NndctError(f"{op.name}: a {op.type} reads a float value; the DPU needs fixed-point inputs")
    return vals  # type: ignore[return-value]


@_int_op("fix")
def _fix(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    return _requantize(env[op.args["input"][0]], *op.fix)


def _accumulate(op: XOp, env: dict[str, Value], acc: torch.Tensor, e: int) -> IntValue:
    if op.args.get("bias"):
        (b,) = _ints(op, env, "bias")
        if b.e <= e:
            return IntValue(acc + b.at(e).reshape(-1), e)
        return IntValue(acc * float(2 ** (b.e - e)) + b.q.reshape(-1), b.e)
    return IntValue(acc, e)


@_int_op("conv2d", "depthwise-conv2d")
def _conv(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    (w,) = _ints(op, env, "weights")
    if op.type == "conv2d":
        weight, groups = w.q.permute(0, 3, 1, 2), run.attr(op, "group", 1)
    else:
        weight, groups = w.q.permute(3, 0, 1, 2), w.q.shape[3]
    left, right, top, bottom = run.attr(op, "pad")
    sw, sh = run.attr(op, "stride")
    dw, dh = run.attr(op, "dilation", [1, 1])
    inp = F.pad(_nchw(x.q), [left, right, top, bottom])
    acc = _nhwc(F.conv2d(inp, weight, None, (sh, sw), 0, (dh, dw), groups))
    return _accumulate(op, env, acc, x.e + w.e)


@_int_op("matmul")
def _matmul(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    a, b = _ints(op, env)
    bq = b.q.transpose(-1, -2) if run.attr(op, "transpose_b") else b.q
    aq = a.q.transpose(-1, -2) if run.attr(op, "transpose_a") else a.q
    return _accumulate(op, env, torch.matmul(aq, bq), a.e + b.e)


@_int_op("add", "sub")
def _add(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (qa, qb), e = _align(_ints(op, env))
    return IntValue(qa + qb if op.type == "add" else qa - qb, e)


@_int_op("mul")
def _mul(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    a_name, b_name = op.args["input"]
    factor = env[b_name]
    if a_name in run.window_sums and isinstance(factor, torch.Tensor):
        window_sum, k = run.window_sums[a_name]
        m, s = avgpool_factor(k)
        return IntValue(window_sum.q * float(m), window_sum.e + s)
    a, b = _ints(op, env)
    return IntValue(a.q * b.q, a.e + b.e)


@_int_op("concat")
def _concat(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    qs, e = _align(_ints(op, env))
    return IntValue(torch.cat(qs, dim=run.attr(op, "axis")), e)


@_int_op("maxpool2d")
def _maxpool(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    k, s, p, ceil = _pool_args(op, run)
    return IntValue(_nhwc(F.max_pool2d(_nchw(x.q), k, s, p, ceil_mode=ceil)), x.e)


@_int_op("avgpool2d")
def _avgpool(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    k, s, p, ceil = _pool_args(op, run)
    window_sum = IntValue(_nhwc(F.avg_pool2d(_nchw(x.q), k, s, p, ceil, True, divisor_override=1)), x.e)
    run.window_sums[op.name] = (window_sum, k[0] * k[1])
    return window_sum  # only meaningful through the factor mul that follows


@_int_op("relu")
def _relu(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    return IntValue(torch.relu(x.q), x.e)


@_int_op("relu6")
def _relu6(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    e = max(x.e, 0)
    return IntValue(x.at(e).clamp(0, 6 * 2**e), e)


@_int_op("leaky-relu")
def _leaky(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    q = x.q * 256.0
    return IntValue(torch.where(x.q < 0, x.q * 26.0, q), x.e + 8)


def _hsig(x: IntValue) -> IntValue:
    e = max(x.e, 0)
    return IntValue((x.at(e) + 3 * 2**e).clamp(0, 6 * 2**e) * float(HSIGMOID_M), e + HSIGMOID_S)


@_int_op("hard-sigmoid")
def _hard_sigmoid(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    return _hsig(x)


@_int_op("hard-swish")
def _hard_swish(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    h = _requantize(_hsig(x), 8, 7)
    return IntValue(x.q * h.q, x.e + h.e)


def _float_op(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    """An op the DPU leaves to the host: run it in float on the dequantized inputs."""
    float_env = {n: (v.to_float() if isinstance(v, IntValue) else v) for n, v in env.items() if n in _names(op)}
    return FLOAT_EXECUTORS[op.type](op, float_env, run)


def _names(op: XOp) -> set[str]:
    return {n for names in op.args.values() for n in names}


def run_integer(deploy: DeployGraph, inputs: list[torch.Tensor]) -> dict[str, Value]:
    """Execute the deploy graph with integer arithmetic wherever the DPU would; returns every op's value."""
    run = _Run(deploy)
    env: dict[str, Value] = {}
    pending = list(inputs)
    for op in deploy.ops:
        if op.type == "data":
            x = pending.pop(0).to(torch.float32)
            env[op.name] = _nhwc(x) if x.dim() == 4 else x
        elif op.type == "const":
            env[op.name] = FLOAT_EXECUTORS["const"](op, env, run)
        elif op.type in INT_EXECUTORS:
            env[op.name] = INT_EXECUTORS[op.type](op, env, run)
        elif op.type in FLOAT_EXECUTORS:
            env[op.name] = _float_op(op, env, run)
        else:
            raise NndctError(f"{op.name}: the integer run cannot execute {op.type!r} (no XIR equivalent)")
    return env


def _on_host(op: XOp, env: dict[str, Value], run: _Run) -> bool:
    """Whether the op reads a float value some op computed on the host (not a const): it then runs in float."""
    return any(isinstance(env[n], torch.Tensor) and n not in run.consts for n in op.args.get("input", []))


def _moves_values(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    """Ops that only move, drop or repeat values: the same on the integers, or on host floats."""
    if _on_host(op, env, run):
        return _float_op(op, env, run)
    (x,) = _ints(op, env)
    if op.type == "reshape":
        return IntValue(x.q.reshape(run.attr(op, "shape")), x.e)
    if op.type == "transpose":
        return IntValue(x.q.permute(run.attr(op, "order")), x.e)
    if op.type == "strided_slice":
        return IntValue(strided_slice(x.q, op, run), x.e)
    return IntValue(x.q, x.e)  # identity


_int_op("reshape", "transpose", "strided_slice", "identity")(_moves_values)


@_int_op("hard-tanh")
def _hard_tanh(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    if _on_host(op, env, run):
        return _float_op(op, env, run)
    (x,) = _ints(op, env)
    e = max(x.e, 0)
    return IntValue(x.at(e).clamp(-(2**e), 2**e), e)


@_int_op("max", "min")
def _max_min(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    """max / min of integers and const bounds (a clamp): compared on the finest grid that holds the bounds."""
    values = [env[n] for n in op.args["input"]]
    ints = [v for v in values if isinstance(v, IntValue)]
    if _on_host(op, env, run) or not ints:
        return _float_op(op, env, run)
    bounds = [v.double() for v in values if isinstance(v, torch.Tensor)]
    e = max(v.e for v in ints)
    while any(not torch.equal(b * 2.0**e, torch.round(b * 2.0**e)) for b in bounds):
        e += 1
        if e > 64:  # a bound off every binary grid: compare in float
            return _float_op(op, env, run)
    qs = [v.at(e) for v in ints] + [b * 2.0**e for b in bounds]
    fn = torch.maximum if op.type == "max" else torch.minimum
    out = qs[0]
    for q in qs[1:]:
        out = fn(out, q)
    return IntValue(out, e)


@_int_op("resize")
def _resize(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    if run.attr(op, "mode") != "NEAREST":  # fractional weights: computed on the host in float
        return FLOAT_EXECUTORS["resize"](op, {op.args["input"][0]: x.to_float()}, run)
    return IntValue(_nhwc(F.interpolate(_nchw(x.q), size=tuple(op.shape[1:3]), mode="nearest")), x.e)


@_int_op("pad")
def _pad(op: XOp, env: dict[str, Value], run: _Run) -> Value:
    (x,) = _ints(op, env)
    if run.attr(op, "mode") != "CONSTANT":
        return IntValue(mirror_pad(x.q, op, run), x.e)
    value = (run.attr(op, "constant_values") or [0.0])[0]
    if value * 2**x.e != int(value * 2**x.e):
        return FLOAT_EXECUTORS["pad"](op, {op.args["input"][0]: x.to_float()}, run)
    return IntValue(F.pad(x.q, _torch_pads(op, run), value=value * 2**x.e), x.e)

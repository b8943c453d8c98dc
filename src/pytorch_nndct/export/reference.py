"""A reference run of the deploy graph: executes the XIR ops we write, as a DPU would compute them.

It proves the exported graph (layouts, weight orders, pads, fix positions) computes what the quantized
simulation computes. Values are float tensors on the fix-point grid; every `fix` op rounds with the DPU's
round-half-up. Average pooling followed by its factor `mul` is computed as the DPU does: the exact window
sum times M / 2^S. Custom ops (no XIR equivalent) cannot run here; the run names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._tables import registrar
from ..errors import NndctError
from ..ir.ops import Op
from ..quant.dpu import DPU_FUNCTIONS
from ..quant.primitives import blockwise, fake_quantize
from ..quant.spec import QuantSpec, RoundMode
from .deploy import DeployGraph, XOp

__all__ = ["EXECUTORS", "iter_deploy_graph", "run_deploy_graph"]

Env = dict[str, torch.Tensor]
Executor = Callable[[XOp, Env, "_Run"], torch.Tensor]
EXECUTORS: dict[str, Executor] = {}


executes = registrar(EXECUTORS)


class _Run:
    def __init__(self, deploy: DeployGraph) -> None:
        self.deploy = deploy
        self.window_sums: dict[str, tuple[torch.Tensor, int]] = {}  # avgpool op -> (exact sum, kernel area)
        self.consts = {op.name for op in deploy.ops if op.type == "const"}

    def attr(self, op: XOp, key: str, default: Any = None) -> Any:
        return op.attrs[key][1] if key in op.attrs else default


def _arg(op: XOp, env: Env, name: str = "input", k: int = 0) -> torch.Tensor:
    return env[op.args[name][k]]


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


@executes("const")
def _const(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    values = np.frombuffer(run.attr(op, "data"), dtype="<f4").astype(np.float32)  # a copy: the run may not alias it
    return torch.from_numpy(values).reshape(run.attr(op, "shape"))


@executes("fix")
def _fix(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    bw, fp = op.fix
    spec = QuantSpec(bw, True, RoundMode.HALF_UP, fp)
    return blockwise(lambda x: fake_quantize(x, spec), _arg(op, env))


def _conv_common(op: XOp, env: Env, run: _Run, weight: torch.Tensor, groups: int) -> torch.Tensor:
    x = _nchw(_arg(op, env))
    left, right, top, bottom = run.attr(op, "pad")
    sw, sh = run.attr(op, "stride")
    dw, dh = run.attr(op, "dilation", [1, 1])
    bias = env[op.args["bias"][0]] if op.args.get("bias") else None
    if left == right and top == bottom:
        y = F.conv2d(x, weight, bias, (sh, sw), (top, left), (dh, dw), groups)
    else:
        y = F.conv2d(F.pad(x, [left, right, top, bottom]), weight, bias, (sh, sw), 0, (dh, dw), groups)
    return _nhwc(y)


@executes("conv2d")
def _conv2d(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    w = _arg(op, env, "weights").permute(0, 3, 1, 2)  # OHWI -> OIHW
    return _conv_common(op, env, run, w, run.attr(op, "group", 1))


@executes("depthwise-conv2d")
def _depthwise(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    w = _arg(op, env, "weights")  # [1, kh, kw, C]
    return _conv_common(op, env, run, w.permute(3, 0, 1, 2), w.shape[3])


@executes("matmul")
def _matmul(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    a, b = _arg(op, env, k=0), _arg(op, env, k=1)
    if run.attr(op, "transpose_a"):
        a = a.transpose(-1, -2)
    if run.attr(op, "transpose_b"):
        b = b.transpose(-1, -2)
    if op.args.get("bias") and b.dim() == 2:
        return F.linear(a, b.t(), env[op.args["bias"][0]])
    y = torch.matmul(a, b)
    return y + env[op.args["bias"][0]] if op.args.get("bias") else y


_BINARY = {"add": torch.add, "sub": torch.sub, "div": torch.div, "max": torch.maximum, "min": torch.minimum}


@executes(*_BINARY)
def _binary(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    a, b = (env[n] for n in op.args["input"])
    return _BINARY[op.type](a, b)


@executes("mul")
def _mul(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    a_name, b_name = op.args["input"]
    if a_name in run.window_sums:  # the DPU's average: window sum * M / 2^S
        window_sum, k = run.window_sums[a_name]
        return window_sum * (env[b_name] / k)
    return env[a_name] * env[b_name]


@executes("concat")
def _concat(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return torch.cat([env[n] for n in op.args["input"]], dim=run.attr(op, "axis"))


def _pool_args(op: XOp, run: _Run) -> tuple:
    kw, kh = run.attr(op, "kernel")
    sw, sh = run.attr(op, "stride")
    left, right, top, bottom = run.attr(op, "pad", [0, 0, 0, 0])
    if left != right or top != bottom:
        raise NndctError(f"{op.name}: asymmetric pooling pads are not supported by the reference run")
    return (kh, kw), (sh, sw), (top, left), run.attr(op, "pad_mode") == "CEIL"


@executes("maxpool2d")
def _maxpool(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    k, s, p, ceil = _pool_args(op, run)
    return _nhwc(F.max_pool2d(_nchw(_arg(op, env)), k, s, p, ceil_mode=ceil))


@executes("avgpool2d")
def _avgpool(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    k, s, p, ceil = _pool_args(op, run)
    x = _nchw(_arg(op, env))
    window_sum = F.avg_pool2d(x, k, s, p, ceil, True, divisor_override=1)
    run.window_sums[op.name] = (_nhwc(window_sum), k[0] * k[1])
    return _nhwc(F.avg_pool2d(x, k, s, p, ceil, run.attr(op, "count_include_pad", True)))


_UNARY: dict[str, Callable[..., torch.Tensor]] = {
    "relu": torch.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "swish": F.silu,
    "hard-sigmoid": DPU_FUNCTIONS[Op.HARDSIGMOID],  # the DPU's forms, shared with the simulation
    "hard-swish": DPU_FUNCTIONS[Op.HARDSWISH],
    "hard-tanh": F.hardtanh,
    "gelu": F.gelu,
    "exp": torch.exp,
    "neg": torch.neg,
    "selu": F.selu,
    "mish": F.mish,
    "identity": lambda x: x,
}


@executes(*_UNARY)
def _unary(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return _UNARY[op.type](_arg(op, env))


@executes("leaky-relu")
def _leaky(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return F.leaky_relu(_arg(op, env), run.attr(op, "alpha"))


@executes("elu", "celu")
def _elu(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return (F.elu if op.type == "elu" else F.celu)(_arg(op, env), run.attr(op, "alpha", 1.0))


def _channels_first(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn (a PyTorch op with channels on dimension 1) of x, whose 4-D values are NHWC here: on the same
    contiguous NCHW tensor the simulation reads, so reductions add in its order."""
    return _nhwc(fn(_nchw(x).contiguous())) if x.dim() == 4 else fn(x)


@executes("prelu")
def _prelu(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return _channels_first(lambda x: F.prelu(x, _arg(op, env, "weight")), _arg(op, env))


def _optional(op: XOp, env: Env, name: str) -> torch.Tensor | None:
    return env[op.args[name][0]] if op.args.get(name) else None


@executes("groupnorm")
def _groupnorm(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    w, b, groups, eps = (
        _optional(op, env, "weight"),
        _optional(op, env, "bias"),
        run.attr(op, "num_groups"),
        run.attr(op, "eps"),
    )
    return _channels_first(lambda x: F.group_norm(x, groups, w, b, eps), _arg(op, env))


@executes("instancenorm")
def _instancenorm(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    w, b, eps = _optional(op, env, "weight"), _optional(op, env, "bias"), run.attr(op, "eps")
    return _channels_first(lambda x: F.instance_norm(x, weight=w, bias=b, eps=eps), _arg(op, env))


@executes("softmax")
def _softmax(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return torch.softmax(_arg(op, env), run.attr(op, "axis"))


@executes("reshape")
def _reshape(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return _arg(op, env).reshape(run.attr(op, "shape"))


@executes("transpose")
def _transpose(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return _arg(op, env).permute(run.attr(op, "order"))


_REDUCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "reduction_mean": torch.mean,
    "reduction_max": torch.amax,
    "reduction_sum": torch.sum,
}


@executes(*_REDUCTIONS)
def _reduce(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    x = _arg(op, env) if op.type == "reduction_mean" else _arg(op, env).contiguous()  # sums in the simulation's order
    return _REDUCTIONS[op.type](x, dim=run.attr(op, "axis"), keepdim=run.attr(op, "keep_dims"))


@executes("reduction_product")
def _product(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    x = _arg(op, env).contiguous()
    for axis in sorted(run.attr(op, "axis"), reverse=True):
        x = x.prod(dim=axis, keepdim=run.attr(op, "keep_dims"))
    return x


@executes("stack")
def _stack(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return torch.stack([env[n] for n in op.args["input"]], dim=run.attr(op, "axis"))


@executes("scale")
def _scale(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return _arg(op, env) * env[op.args["scale"][0]] + env[op.args["bias"][0]]


def iter_deploy_graph(deploy: DeployGraph, inputs: list[torch.Tensor]) -> Iterator[tuple[XOp, torch.Tensor]]:
    """Execute the deploy graph on `inputs` (logical NCHW tensors, in data-op order), yielding each op and its
    value in order. A value is let go once the last op reading it has run, so the run holds what is still needed,
    not every activation and a second copy of every weight."""
    last_read = {name: k for k, op in enumerate(deploy.ops) for names in op.args.values() for name in names}
    run = _Run(deploy)
    env: Env = {}
    pending = list(inputs)
    for k, op in enumerate(deploy.ops):
        if op.type == "data":
            if not pending:
                raise NndctError(f"the deploy graph has more inputs than the {len(inputs)} given")
            x = pending.pop(0).to(torch.float32)
            env[op.name] = _nhwc(x) if x.dim() == 4 else x
        else:
            fn = EXECUTORS.get(op.type)
            if fn is None:
                raise NndctError(f"{op.name}: the reference run cannot execute {op.type!r} (no XIR equivalent)")
            env[op.name] = fn(op, env, run)
        yield op, env[op.name]
        for name in [op.name, *(n for names in op.args.values() for n in names)]:
            if last_read.get(name, -1) <= k:
                env.pop(name, None)
                run.window_sums.pop(name, None)


def run_deploy_graph(deploy: DeployGraph, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Execute the deploy graph on `inputs` (logical NCHW tensors, in data-op order); returns every op's value."""
    return {op.name: value for op, value in iter_deploy_graph(deploy, inputs)}


def strided_slice(x: torch.Tensor, op: XOp, run: _Run) -> torch.Tensor:
    """x[begin:end:strides], without the dimensions shrink_axis_mask names."""
    begin, end, strides = run.attr(op, "begin"), run.attr(op, "end"), run.attr(op, "strides")
    y = x[tuple(slice(b, e, s) for b, e, s in zip(begin, end, strides, strict=True))]
    shrink = run.attr(op, "shrink_axis_mask", 0)
    return y.squeeze([d for d in range(len(begin)) if shrink >> d & 1]) if shrink else y


@executes("strided_slice")
def _strided_slice(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    return strided_slice(_arg(op, env), op, run)


@executes("resize")
def _resize(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    x = _nchw(_arg(op, env))
    size = tuple(op.shape[1:3])
    if run.attr(op, "mode") == "NEAREST":
        return _nhwc(F.interpolate(x, size=size, mode="nearest"))
    return _nhwc(F.interpolate(x, size=size, mode="bilinear", align_corners=run.attr(op, "align_corners")))


def _torch_pads(op: XOp, run: _Run) -> list[int]:
    pairs = run.attr(op, "paddings")
    dims = len(pairs) // 2
    return [p for k in reversed(range(dims)) for p in (pairs[2 * k], pairs[2 * k + 1])]


def mirror_pad(x: torch.Tensor, op: XOp, run: _Run) -> torch.Tensor:
    """XIR's REFLECT (edge not repeated) or SYMMETRIC (edge repeated) padding, by gathering along each dim."""
    pairs, edge = run.attr(op, "paddings"), int(run.attr(op, "mode") == "SYMMETRIC")
    for d in range(x.dim()):
        before, after = pairs[2 * d], pairs[2 * d + 1]
        if before or after:
            n = x.shape[d]
            index = [*range(before - edge, -edge, -1), *range(n), *range(n - 2 + edge, n - 2 + edge - after, -1)]
            x = x.index_select(d, torch.tensor(index, device=x.device))
    return x


@executes("pad")
def _pad(op: XOp, env: Env, run: _Run) -> torch.Tensor:
    if run.attr(op, "mode") != "CONSTANT":
        return mirror_pad(_arg(op, env), op, run)
    value = (run.attr(op, "constant_values") or [0.0])[0]
    return F.pad(_arg(op, env), _torch_pads(op, run), value=value)

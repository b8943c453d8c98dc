"""The closed op vocabulary of our graph IR and what each op means for quantization.

`Op` names every operation a `Node` can perform. `OPS` holds one `OpDef` per op: the parameter roles
it owns (weights, biases, BN statistics), the attributes it requires, and how its output relates to
quantization (its own fix position, sharing its input's, or none at all). Anything the front end does not
recognise becomes `Op.ATEN`, a float op that calls the original ATen operator by name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["OPS", "Op", "OpDef", "OutputRule", "reduced_axes"]


class Op(enum.Enum):
    """Every operation a node can perform. The value is the stable name used in dumps and node names."""

    # structure
    INPUT = "input"
    CONST = "const"
    GETITEM = "getitem"
    SIZE = "size"
    SCALAR = "scalar"
    # weighted
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    CONV_TRANSPOSE1D = "conv_transpose1d"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    CONV_TRANSPOSE3D = "conv_transpose3d"
    LINEAR = "linear"
    EMBEDDING = "embedding"
    BATCH_NORM = "batch_norm"
    CHANNEL_SCALE = "channel_scale"
    LAYER_NORM = "layer_norm"
    GROUP_NORM = "group_norm"
    # activations
    RELU = "relu"
    RELU6 = "relu6"
    HARDTANH = "hardtanh"
    LEAKY_RELU = "leaky_relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    SILU = "silu"
    GELU = "gelu"
    HARDSIGMOID = "hardsigmoid"
    HARDSWISH = "hardswish"
    SOFTMAX = "softmax"
    # arithmetic
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MATMUL = "matmul"
    MEAN = "mean"
    # pooling and resampling
    MAX_POOL2D = "max_pool2d"
    AVG_POOL2D = "avg_pool2d"
    ADAPTIVE_AVG_POOL2D = "adaptive_avg_pool2d"
    INTERPOLATE = "interpolate"
    PAD = "pad"
    # layout
    CAT = "cat"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    PERMUTE = "permute"
    TRANSPOSE = "transpose"
    CONTIGUOUS = "contiguous"
    UNSQUEEZE = "unsqueeze"
    SQUEEZE = "squeeze"
    SLICE = "slice"
    SELECT = "select"
    CHUNK = "chunk"
    SPLIT = "split"
    EXPAND = "expand"
    PIXEL_SHUFFLE = "pixel_shuffle"
    # removed by passes
    DROPOUT = "dropout"
    IDENTITY = "identity"
    # anything else: a float op calling the original ATen operator
    ATEN = "aten"
    # an op the user registered with pytorch_nndct.utils.register_custom_op
    CUSTOM = "custom"


class OutputRule(enum.Enum):
    """How an op's output is quantized (SPEC 2.2)."""

    OWN = "own"  # the op's output gets its own fix position
    SHARE = "share"  # activation- or layout-like: joins its producer's group when it is the only consumer
    NONE = "none"  # not a tensor, or not quantized (structure, integer results)


@dataclass(frozen=True)
class OpDef:
    """What the rest of the tool needs to know about one op."""

    op: Op
    params: tuple[str, ...] = ()  # parameter roles, in order; optional ones are listed in `optional`
    optional: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()  # attributes every node of this op carries
    output: OutputRule = OutputRule.OWN
    variadic: bool = False  # inputs are a list of tensors (cat)
    multi_output: bool = False  # returns a tuple or list; consumers read it through GETITEM

    @property
    def is_conv(self) -> bool:
        return self.op in CONV_OPS


CONV_OPS = frozenset(
    {
        Op.CONV1D,
        Op.CONV2D,
        Op.CONV3D,
        Op.CONV_TRANSPOSE1D,
        Op.CONV_TRANSPOSE2D,
        Op.CONV_TRANSPOSE3D,
    }
)
TRANSPOSED_CONV_OPS = frozenset({Op.CONV_TRANSPOSE1D, Op.CONV_TRANSPOSE2D, Op.CONV_TRANSPOSE3D})

_CONV_ATTRS = ("stride", "padding", "dilation", "groups")
_W_B = ("weight", "bias")
_S = OutputRule.SHARE
_N = OutputRule.NONE


def _defs() -> dict[Op, OpDef]:
    table = [
        OpDef(Op.INPUT),
        OpDef(Op.CONST, params=("value",), output=_N),
        OpDef(Op.GETITEM, attrs=("index",), output=_N),
        OpDef(Op.SIZE, attrs=("dim",), output=_N),
        OpDef(Op.SCALAR, attrs=("fn", "args"), output=_N),
        OpDef(Op.CONV1D, params=_W_B, optional=("bias",), attrs=_CONV_ATTRS),
        OpDef(Op.CONV2D, params=_W_B, optional=("bias",), attrs=_CONV_ATTRS),
        OpDef(Op.CONV3D, params=_W_B, optional=("bias",), attrs=_CONV_ATTRS),
        OpDef(Op.CONV_TRANSPOSE1D, params=_W_B, optional=("bias",), attrs=(*_CONV_ATTRS, "output_padding")),
        OpDef(Op.CONV_TRANSPOSE2D, params=_W_B, optional=("bias",), attrs=(*_CONV_ATTRS, "output_padding")),
        OpDef(Op.CONV_TRANSPOSE3D, params=_W_B, optional=("bias",), attrs=(*_CONV_ATTRS, "output_padding")),
        OpDef(Op.LINEAR, params=_W_B, optional=("bias",)),
        OpDef(Op.EMBEDDING, params=("weight",), attrs=("padding_idx",)),
        OpDef(
            Op.BATCH_NORM,
            params=("weight", "bias", "running_mean", "running_var"),
            optional=("weight", "bias"),
            attrs=("eps",),
        ),
        OpDef(Op.CHANNEL_SCALE, params=("weight", "bias"), attrs=("dim",)),
        OpDef(Op.LAYER_NORM, params=_W_B, optional=_W_B, attrs=("normalized_shape", "eps")),
        OpDef(Op.GROUP_NORM, params=_W_B, optional=_W_B, attrs=("num_groups", "eps")),
        OpDef(Op.RELU, output=_S),
        OpDef(Op.RELU6, output=_S),
        OpDef(Op.HARDTANH, attrs=("min_val", "max_val"), output=_S),
        OpDef(Op.LEAKY_RELU, attrs=("negative_slope",), output=_S),
        OpDef(Op.SIGMOID),
        OpDef(Op.TANH),
        OpDef(Op.SILU),
        OpDef(Op.GELU, attrs=("approximate",)),
        OpDef(Op.HARDSIGMOID),
        OpDef(Op.HARDSWISH),
        OpDef(Op.SOFTMAX, attrs=("dim",)),
        OpDef(Op.ADD, attrs=("other", "alpha")),
        OpDef(Op.SUB, attrs=("other", "alpha")),
        OpDef(Op.MUL, attrs=("other",)),
        OpDef(Op.DIV, attrs=("other", "rounding_mode")),
        OpDef(Op.MATMUL),
        OpDef(Op.MEAN, attrs=("dim", "keepdim")),
        OpDef(Op.MAX_POOL2D, attrs=("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
        OpDef(
            Op.AVG_POOL2D,
            attrs=("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
        ),
        OpDef(Op.ADAPTIVE_AVG_POOL2D, attrs=("output_size",)),
        OpDef(Op.INTERPOLATE, attrs=("size", "scale_factor", "mode", "align_corners")),
        OpDef(Op.PAD, attrs=("pad", "mode", "value")),
        OpDef(Op.CAT, attrs=("dim",), variadic=True),
        OpDef(Op.FLATTEN, attrs=("start_dim", "end_dim"), output=_S),
        OpDef(Op.RESHAPE, attrs=("shape",), output=_S),
        OpDef(Op.PERMUTE, attrs=("dims",), output=_S),
        OpDef(Op.TRANSPOSE, attrs=("dim0", "dim1"), output=_S),
        OpDef(Op.CONTIGUOUS, output=_S),
        OpDef(Op.UNSQUEEZE, attrs=("dim",), output=_S),
        OpDef(Op.SQUEEZE, attrs=("dim",), output=_S),
        OpDef(Op.SLICE, attrs=("dim", "start", "end", "step"), output=_S),
        OpDef(Op.SELECT, attrs=("dim", "index"), output=_S),
        OpDef(Op.CHUNK, attrs=("chunks", "dim"), output=_S, multi_output=True),
        OpDef(Op.SPLIT, attrs=("split_size", "dim"), output=_S, multi_output=True),
        OpDef(Op.EXPAND, attrs=("size",), output=_S),
        OpDef(Op.PIXEL_SHUFFLE, attrs=("upscale_factor",), output=_S),
        OpDef(Op.DROPOUT, output=_S),
        OpDef(Op.IDENTITY, output=_S),
        OpDef(Op.ATEN, attrs=("target", "args", "kwargs")),
        OpDef(Op.CUSTOM, attrs=("op_type", "target", "args", "kwargs", "op_attrs")),
    ]
    return {d.op: d for d in table}


OPS: dict[Op, OpDef] = _defs()


def reduced_axes(dim: int | list[int] | tuple[int, ...] | None, rank: int) -> list[int]:
    """The axes a reduction's `dim` attribute names (None: all), non-negative and sorted."""
    dims = range(rank) if dim is None else [dim] if isinstance(dim, int) else dim
    return sorted(d % rank for d in dims)

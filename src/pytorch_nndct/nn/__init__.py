"""The small runtime that generated modules import (`import pytorch_nndct.nn as nndct_nn`)."""

from .functional import FUNCTIONS, resolve_aten
from .modules import (
    Aten,
    BatchNorm,
    ChannelScale,
    Const,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    GroupNorm,
    Input,
    LayerNorm,
    Linear,
    Module,
)


def call_function(qualname: str, *args, **kwargs):
    """Call a scalar helper by its qualified name (`'math.ceil'`), for symbolic size arithmetic."""
    import importlib

    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


__all__ = [
    "FUNCTIONS",
    "Aten",
    "BatchNorm",
    "ChannelScale",
    "Const",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "GroupNorm",
    "Input",
    "LayerNorm",
    "Linear",
    "Module",
    "call_function",
    "resolve_aten",
]

"""The small runtime that generated modules import (`import pytorch_nndct.nn as nndct_nn`)."""

from __future__ import annotations

import importlib
from typing import Any

from . import modules
from .functional import FUNCTIONS, resolve_aten
from .modules import *  # noqa: F403  (the module classes generated code builds)


def call_function(qualname: str, *args: Any, **kwargs: Any) -> Any:
    """Call a scalar helper by its qualified name (`'math.ceil'`), for symbolic size arithmetic."""
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


__all__ = ["FUNCTIONS", "call_function", "resolve_aten", *modules.__all__]

"""TorchScript export (`<Model>_int.pt`): the test-mode quantized model traced with plain ATen ops.

The trace runs the eager primitives (not the compiled kernels, which torch.jit cannot record), which are
bit-exact with the kernels, so the saved module computes exactly what the simulation computes. Fix
positions and the fake-quantized parameters become constants of the trace; it needs no import of this
package to load (`torch.jit.load` alone), unlike the original's `vai::fix_neuron` ops.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..codegen import prepare_output_dir, write_atomic
from ..errors import NndctError
from ..quant import kernels

__all__ = ["trace_quantized", "write_torch_script"]

log = logging.getLogger("pytorch_nndct")


@contextmanager
def _eager_kernels() -> Iterator[None]:
    was = kernels.kernels_enabled()
    kernels.kernels_enabled(False)
    try:
        yield
    finally:
        kernels.kernels_enabled(was)


def _same(a: Any, b: Any) -> bool:
    la = torch.utils._pytree.tree_leaves(a)  # TorchScript may turn tuples into lists: compare the leaves
    lb = torch.utils._pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
        for x, y in zip(la, lb)
    )


def trace_quantized(model: torch.nn.Module, inputs: tuple) -> torch.jit.ScriptModule:
    """torch.jit.trace of the quantized `model` on `inputs`, checked to reproduce its outputs bit for bit."""
    with _eager_kernels(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values; the result is checked below
        expected = model(*inputs)
        try:
            traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
        except Exception as exc:
            raise NndctError(
                f"the quantized model cannot be traced to TorchScript: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. The .xmodel and ONNX exports do "
                "not need tracing."
            ) from exc
        got = traced(*inputs)
    if not _same(expected, got):
        raise NndctError(
            "the traced TorchScript model does not reproduce the quantized model's outputs bit for bit; it was "
            "not written. Please report this with the model."
        )
    return traced


def write_torch_script(
    model: torch.nn.Module, inputs: tuple, output_dir: str | os.PathLike, name: str, verbose: bool = False
) -> tuple[Path, torch.jit.ScriptModule]:
    """Trace `model` on `inputs` and write `<output_dir>/<name>_int.pt` atomically."""
    traced = trace_quantized(model, inputs)
    if verbose:
        log.info("TorchScript graph of %s:\n%s", name, traced.graph)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(traced, buf)
    path = prepare_output_dir(output_dir) / f"{name}_int.pt"
    write_atomic({path: buf.getvalue()})
    return path, traced

"""The arguments of `torch_quantizer`, resolved: both releases' positional orders, example inputs given as
positional and keyword arguments, the device, and a clear error for every option we do not support yet.

vai_q_pytorch 1.2 documents `torch_quantizer(quant_mode, module, input_args, state_dict_file, output_dir,
bitwidth_w, bitwidth_a)`; 3.5 puts `input_kwargs` fourth (`..., input_args, input_kwargs, state_dict_file,
output_dir, bitwidth, mix_bit, device, ...`). A path in fourth place therefore means a 1.2 call, a dict a
3.5 one; `resolve_positional` maps the former onto the latter.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

__all__ = ["LegacyArgs", "bind_inputs", "check_app_deploy", "check_unsupported", "resolve_device", "resolve_positional"]

log = logging.getLogger("pytorch_nndct")


@dataclass(frozen=True)
class LegacyArgs:
    """The file, folder and bit widths of a call, whichever release's positional order it used."""

    state_dict_file: str | os.PathLike | None
    output_dir: str | os.PathLike
    bitwidth_w: int | None
    bitwidth_a: int | None


def resolve_positional(
    input_kwargs: Any,
    state_dict_file: Any,
    output_dir: Any,
    bitwidth: Any,
    bitwidth_w: int | None,
    bitwidth_a: int | None,
) -> tuple[dict | None, LegacyArgs]:
    """(input_kwargs, the rest) from the values bound to the 3.5 parameter names."""
    if isinstance(input_kwargs, str | os.PathLike):  # a 1.2 call: (..., state_dict_file, output_dir, bw_w, bw_a)
        out = state_dict_file if state_dict_file is not None else output_dir
        bw_w = output_dir if isinstance(output_dir, int) and not isinstance(output_dir, bool) else None
        return None, LegacyArgs(input_kwargs, out, bitwidth_w or bw_w, bitwidth_a or bitwidth)
    if input_kwargs is not None and not isinstance(input_kwargs, dict):
        raise InputError(
            f"input_kwargs must be a dict of keyword example inputs (e.g. {{'attention_mask': mask}}), got "
            f"{type(input_kwargs).__name__}. (A state-dict path in fourth place is read as the 1.2 order.)"
        )
    return input_kwargs, LegacyArgs(state_dict_file, output_dir, bitwidth_w or bitwidth, bitwidth_a or bitwidth)


_UNSUPPORTED = {
    "lstm": (
        True,
        "lstm=True (the original's RNN quantizer with 16-bit activations) is not supported yet. Fix: quantize "
        "the model without it; per-layer 16-bit activations can be set in quant_config_file.",
    ),
    "mix_bit": (
        True,
        "mix_bit=True (automatic mixed bit widths) is not supported yet (the original ignores it outside QAT). "
        "Fix: drop it and pass mixed_precision_budget (16-bit activation points chosen by measured sensitivity), "
        "or set per-layer bit widths in quant_config_file's layer_quantize_config.",
    ),
    "qat_proc": (
        True,
        "qat_proc=True (quantization-aware training) is not supported yet. Fix: use post-training quantization "
        "(calib, then test) for now.",
    ),
}


def check_unsupported(**options: Any) -> None:
    """A clear error for each option we do not honour yet; never ignored silently."""
    for name, value in options.items():
        bad, message = _UNSUPPORTED[name]
        if value == bad:
            raise InputError(message)


def check_app_deploy(app_deploy: Any) -> None:
    if app_deploy == "CV":
        return
    if app_deploy == "NLP":
        raise InputError(
            "app_deploy='NLP' selects the original's LSTM deployment, which is not supported yet. Fix: use "
            "app_deploy='CV' (the default); transformers are quantized in the CV flow."
        )
    raise InputError(f"app_deploy must be 'CV' or 'NLP', got {app_deploy!r}.")


def resolve_device(device: Any) -> torch.device | None:
    """The device to run on: None keeps the model where its parameters are. A CUDA device asked for on a
    machine without CUDA falls back to the CPU with a warning, as the original does."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:0').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s was asked for but CUDA is not available; running on the CPU", dev)
        return torch.device("cpu")
    return dev


def bind_inputs(module: torch.nn.Module, args: Any, kwargs: dict | None) -> Any:
    """The example inputs as the positional tuple the tracer takes. Keyword inputs are placed by the name
    of forward's parameter (parameters between them take their defaults)."""
    if not kwargs:
        return args
    positional = args if isinstance(args, tuple) else (() if args is None else (args,))
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError) as exc:
        raise InputError(f"input_kwargs needs {type(module).__name__}.forward's signature: {exc}") from exc
    params = list(sig.parameters.values())
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise InputError(
            f"input_kwargs {unknown} are not positional-or-keyword parameters of {type(module).__name__}.forward "
            f"(it takes {names}). Fix: pass those inputs by their parameter names (keyword-only and **kwargs "
            "inputs are not supported yet)."
        )
    try:
        bound = sig.bind_partial(*positional, **kwargs)
    except TypeError as exc:
        raise InputError(f"input_args and input_kwargs do not fit {type(module).__name__}.forward: {exc}.") from exc
    last = max(names.index(k) for k in bound.arguments)
    out = []
    for name in names[: last + 1]:
        if name in bound.arguments:
            out.append(bound.arguments[name])
            continue
        default = sig.parameters[name].default
        if default is inspect.Parameter.empty:
            raise InputError(f"{type(module).__name__}.forward needs an example value for {name!r}.")
        out.append(default)
    return tuple(out)

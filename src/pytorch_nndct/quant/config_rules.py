"""The original's conflict checks between a target device and a tensor's settings (VAIQ35 7.1), as data.

Each rule is checked on the effective settings of one tensor kind (after defaults, overall and per-kind
sections; per layer for the kinds the layer lists) whose datatype is "int". A violated rule is a ConfigError
that names the key, its value, the rule and the fix. FLEXML has no rules (as in the original); our own
limits (bit widths, what the simulation cannot do yet) come after the original's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RULES", "Rule", "check_rules"]

Settings = dict[str, Any]  # the original's keys: datatype, bit_width, method, round_mode, symmetry, ...

_DPU_FIX = "set target_device to CPU or GPU (ONNX Runtime), or remove the key"
_SCALE_FIX = "or use scale_type 'float'"


def _float(s: Settings) -> bool:
    return s["scale_type"] == "float"


def _pc(s: Settings) -> bool:
    return s["per_channel"] is True


def _round(s: Settings) -> str:
    return s["round_mode"] or "std_round"  # unset: the original's default for weights, bias and input


@dataclass(frozen=True)
class Rule:
    """`applies(kind, settings)` selects the tensors the rule constrains; `ok(settings, all kinds)` must hold."""

    targets: tuple[str, ...]
    key: str
    applies: Callable[[str, Settings], bool]
    ok: Callable[[Settings, dict[str, Settings]], bool]
    why: str
    fix: str


def _all(kind: str, s: Settings) -> bool:
    return True


def _act(kind: str, s: Settings) -> bool:
    return kind in ("input", "activation")


_DPU, _CPU_GPU = ("DPU",), ("CPU", "GPU")

RULES: tuple[Rule, ...] = (
    # ---- DPU + int (QConfigBase._handle_dpu_tensor_conflict)
    Rule(_DPU, "bit_width", _all,
         lambda s, kinds: "bias" not in kinds or "activation" not in kinds
         or kinds["bias"]["bit_width"] == kinds["activation"]["bit_width"],
         "the DPU adds the bias at the activation's bit width, so bias and activation bit widths must be equal",
         f"give bias and activation the same bit_width, or {_DPU_FIX}"),
    Rule(_DPU, "symmetry", _all, lambda s, k: s["symmetry"] is True,
         "the DPU quantizes symmetrically", f"remove the key or set it to true, or {_DPU_FIX}"),
    Rule(_DPU, "method", _all, lambda s, k: s["method"] in ("diffs", "maxmin"),
         "the DPU calibrates with diffs or maxmin", f"use method 'diffs' or 'maxmin', or {_DPU_FIX}"),
    Rule(_DPU, "per_channel", _all, lambda s, k: not _pc(s),
         "the DPU quantizes per tensor", f"remove the key or set it to false, or {_DPU_FIX}"),
    Rule(_DPU, "scale_type", _all, lambda s, k: s["scale_type"] == "poweroftwo",
         "the DPU uses power-of-two scales", f"use scale_type 'poweroftwo', or {_DPU_FIX}"),
    Rule(_DPU, "narrow_range", _all, lambda s, k: s["narrow_range"] is not True,
         "the DPU uses the full integer range", f"remove the key or set it to false, or {_DPU_FIX}"),
    Rule(_DPU, "calib_statistic_method", _act, lambda s, k: s["calib_statistic_method"] == "modal",
         "the DPU keeps the most frequent fix position over batches",
         f"use calib_statistic_method 'modal', or {_DPU_FIX}"),
    Rule(_DPU, "round_mode", lambda kind, s: kind == "activation", lambda s, k: s["round_mode"] == "half_up",
         "the DPU rounds activations half up",
         "remove the key or use 'half_up', or set target_device to CPU or GPU (for ONNX Runtime, half_even "
         "matches its QuantizeLinear)"),
    Rule(_DPU, "round_mode", lambda kind, s: kind != "activation", lambda s, k: _round(s) == "std_round",
         "the DPU rounds weights, biases and (in the original's naming) inputs with std_round",
         f"remove the key or use 'std_round', or {_DPU_FIX}"),
    # ---- CPU/GPU + int (QConfigBase._handle_cpu_gpu_tensor_conflict)
    Rule(_CPU_GPU, "per_channel", lambda kind, s: kind != "weights", lambda s, k: not _pc(s),
         "per-channel quantization is only for weights", "remove the key or set it to false"),
    Rule(_CPU_GPU, "method", lambda kind, s: _pc(s) and _float(s), lambda s, k: s["method"] == "maxmin",
         "per-channel float scales are calibrated with maxmin", "use method 'maxmin'"),
    Rule(_CPU_GPU, "method", lambda kind, s: _pc(s) and not _float(s),
         lambda s, k: s["method"] in ("diffs", "maxmin"),
         "per-channel power-of-two scales are calibrated with diffs or maxmin",
         f"use 'diffs' or 'maxmin' {_SCALE_FIX}"),
    Rule(_CPU_GPU, "symmetry", lambda kind, s: _pc(s) and not _float(s), lambda s, k: s["symmetry"] is True,
         "per-channel power-of-two scales are symmetric", f"set symmetry to true {_SCALE_FIX}"),
    Rule(_CPU_GPU, "signed", lambda kind, s: _pc(s) and not _float(s), lambda s, k: s["signed"] is True,
         "per-channel power-of-two scales are signed", f"set signed to true {_SCALE_FIX}"),
    Rule(_CPU_GPU, "method", lambda kind, s: not _pc(s) and _float(s),
         lambda s, k: s["method"] in ("maxmin", "percentile", "mse", "entropy"),
         "per-tensor float scales are calibrated with maxmin, percentile, mse or entropy", "use one of those"),
    Rule(_CPU_GPU, "calib_statistic_method", lambda kind, s: _act(kind, s) and not _pc(s) and _float(s),
         lambda s, k: s["calib_statistic_method"] in ("max", "mean", "median"),
         "per-tensor float scales are combined over batches by max, mean or median",
         "use calib_statistic_method 'max', 'mean' or 'median'"),
    Rule(_CPU_GPU, "symmetry", lambda kind, s: not _pc(s) and _float(s),
         lambda s, k: s["symmetry"] is True or s["method"] not in ("percentile", "entropy", "mse"),
         "asymmetric float scales are calibrated with maxmin only (not percentile, entropy or mse)",
         "set symmetry to true, or use method 'maxmin'"),
    Rule(_CPU_GPU, "method", lambda kind, s: not _pc(s) and not _float(s),
         lambda s, k: s["method"] in ("diffs", "maxmin"),
         "per-tensor power-of-two scales are calibrated with diffs or maxmin", f"use 'diffs' or 'maxmin' {_SCALE_FIX}"),
    Rule(_CPU_GPU, "symmetry", lambda kind, s: not _pc(s) and not _float(s), lambda s, k: s["symmetry"] is True,
         "power-of-two scales are symmetric", f"set symmetry to true {_SCALE_FIX}"),
    Rule(_CPU_GPU, "signed", lambda kind, s: not _pc(s) and not _float(s), lambda s, k: s["signed"] is True,
         "power-of-two scales are signed", f"set signed to true {_SCALE_FIX}"),
    Rule(_CPU_GPU, "calib_statistic_method", lambda kind, s: _act(kind, s) and not _pc(s) and not _float(s),
         lambda s, k: s["calib_statistic_method"] == "modal",
         "power-of-two scales keep the most frequent fix position over batches",
         f"use calib_statistic_method 'modal' {_SCALE_FIX}"),
)  # fmt: skip


def check_rules(target: str, kinds: dict[str, Settings], where: str, error: type[Exception]) -> None:
    """Raise `error` for the first rule the int tensors of `kinds` (kind -> settings) break on `target`."""
    for kind, settings in kinds.items():
        if settings["datatype"] != "int":
            continue
        for rule in RULES:
            if target in rule.targets and rule.applies(kind, settings) and not rule.ok(settings, kinds):
                value = settings[rule.key] if rule.key != "round_mode" else _round(settings)
                shown = f"{kind}: {rule.key} = {_json(value)}"
                if rule.key == "bit_width":
                    shown = (f"bias: bit_width = {kinds['bias']['bit_width']} and activation: bit_width = "
                             f"{kinds['activation']['bit_width']}")  # fmt: skip
                raise error(f"{where}: {shown} conflicts with target_device {target}: {rule.why}. Fix: {rule.fix}.")


def _json(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)

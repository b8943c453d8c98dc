"""The strategy config (SPEC 2.6): the original's `quant_config_file` keys, validated, as typed settings.

`parse_config(doc)` takes the JSON document (a dict) and returns a QuantConfig, or raises ConfigError
naming the key, the value and the fix. Every key of the original is recognised; a value this package
cannot honour yet is refused ("not supported yet") rather than ignored, and options that contradict the
DPU target (per-channel, float scales, asymmetric, statistical methods) are refused for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .spec import CalibSpec, QuantSpec, RoundMode, TensorKind

__all__ = ["ConfigError", "LayerRule", "QuantConfig", "TensorConfig", "parse_config"]


class ConfigError(InputError):
    """The strategy config file is invalid or asks for something not supported."""


TOP_KEYS = frozenset(
    {
        "convert_relu6_to_relu",
        "convert_silu_to_hswish",
        "include_cle",
        "include_bias_corr",
        "keep_first_last_layer_accuracy",
        "keep_add_layer_accuracy",
        "target_device",
        "quantizable_data_type",
        "overall_quantize_config",
        "tensor_quantize_config",
        "layer_quantize_config",
    }
)
TENSOR_KEYS = frozenset(
    {
        "datatype",
        "bit_width",
        "method",
        "round_mode",
        "symmetry",
        "per_channel",
        "signed",
        "narrow_range",
        "scale_type",
        "calib_statistic_method",
        "percentage",
    }
)
LAYER_KEYS = frozenset(
    {"layer_type", "layer_name", "quantizable_data_type", "overall_quantize_config", "tensor_quantize_config"}
)
KINDS = {k.value: k for k in TensorKind}  # "input", "weights", "bias", "activation"
TARGETS = ("DPU", "CPU", "GPU")
METHODS = ("diffs", "maxmin", "percentile", "mse", "entropy")
DPU_METHODS = ("diffs", "maxmin")
SUPPORTED_METHODS = ("diffs", "maxmin", "percentile", "mse")
STATISTICS = ("modal", "max", "mean", "median")
ROUND_MODES = {"half_even": RoundMode.HALF_EVEN, "half_up": RoundMode.HALF_UP, "half_down": RoundMode.HALF_DOWN,
               "std_round": RoundMode.HALF_AWAY}  # fmt: skip
# keys whose only supported value is the default, with what the other values would need
_ONLY_DEFAULT = {
    "datatype": ("int", "float data types (bfloat16, float16, float32)"),
    "symmetry": (True, "asymmetric quantization"),
    "per_channel": (False, "per-channel quantization"),
    "signed": (True, "unsigned quantization"),
    "narrow_range": (False, "narrow-range quantization"),
    "scale_type": ("poweroftwo", "float scales"),
}
_NOT_ON_DPU = {"symmetry": False, "per_channel": True, "scale_type": "float"}


@dataclass(frozen=True)
class TensorConfig:
    """How one kind of tensor is quantized."""

    bit_width: int = 8
    round_mode: RoundMode = RoundMode.HALF_UP
    calib: CalibSpec = field(default_factory=CalibSpec)

    float_scale: bool = False
    per_channel: bool = False

    def spec(self) -> QuantSpec:
        return QuantSpec(
            self.bit_width, True, self.round_mode, float_scale=self.float_scale, per_channel=self.per_channel
        )


@dataclass(frozen=True)
class LayerRule:
    """A per-layer override: layers matched by module type or by name take these tensor settings."""

    layer_type: str | None
    layer_name: str | None
    tensors: dict[TensorKind, TensorConfig]

    def matches(self, scope: str, module_type: type | None) -> bool:
        if self.layer_name is not None:
            return scope == self.layer_name or scope.startswith(self.layer_name + ".")
        if module_type is None or self.layer_type is None:
            return False
        names = {module_type.__name__, f"{module_type.__module__}.{module_type.__qualname__}"}
        if module_type.__module__.startswith("torch.nn"):
            names.add(f"torch.nn.{module_type.__name__}")
        return self.layer_type in names


@dataclass
class QuantConfig:
    """All settings of one quantization run; `QuantConfig.default(bw_w, bw_a)` is the original's default."""

    target_device: str = "DPU"
    include_cle: bool = True
    include_bias_corr: bool = True
    tensors: dict[TensorKind, TensorConfig] = field(default_factory=dict)
    layers: list[LayerRule] = field(default_factory=list)

    @staticmethod
    def default(bitwidth_w: int = 8, bitwidth_a: int = 8) -> QuantConfig:
        return QuantConfig(tensors=_default_tensors(bitwidth_w, bitwidth_a))

    def tensor(self, kind: TensorKind, scope: str = "", module_type: type | None = None) -> TensorConfig:
        """The settings for a tensor of `kind` in the layer at `scope` (the last matching rule wins)."""
        chosen = self.tensors[kind]
        for rule in self.layers:
            if kind in rule.tensors and rule.matches(scope, module_type):
                chosen = rule.tensors[kind]
        return chosen


def _default_tensors(bitwidth_w: int, bitwidth_a: int) -> dict[TensorKind, TensorConfig]:
    return {
        TensorKind.WEIGHT: TensorConfig(bitwidth_w, RoundMode.HALF_AWAY),
        TensorKind.BIAS: TensorConfig(bitwidth_a, RoundMode.HALF_AWAY),
        TensorKind.INPUT: TensorConfig(bitwidth_a, RoundMode.HALF_UP, CalibSpec("maxmin")),
        TensorKind.ACTIVATION: TensorConfig(bitwidth_a, RoundMode.HALF_UP),
    }


def parse_config(doc: Any, bitwidth_w: int = 8, bitwidth_a: int = 8, where: str = "quant_config_file") -> QuantConfig:
    """Validate the config document and build the settings (defaults from `bitwidth_w` / `bitwidth_a`)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {type(doc).__name__}.")
    _unknown(doc, TOP_KEYS, where)
    target = doc.get("target_device", "DPU")
    if target not in TARGETS:
        raise ConfigError(f"{where}: target_device {target!r} is not one of {', '.join(TARGETS)}.")
    flags = {}
    for key, default in (
        ("include_cle", True),
        ("include_bias_corr", True),
        ("convert_relu6_to_relu", False),
        ("convert_silu_to_hswish", False),
        ("keep_first_last_layer_accuracy", False),
        ("keep_add_layer_accuracy", False),
    ):
        value = doc.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}.")
        flags[key] = value
    for key in ("convert_relu6_to_relu", "convert_silu_to_hswish", "keep_first_last_layer_accuracy",
                "keep_add_layer_accuracy"):  # fmt: skip
        if flags[key]:
            raise ConfigError(f"{where}: {key}: true is not supported yet. Fix: remove the key or set it to false.")
    _check_quantizable(doc.get("quantizable_data_type"), where)
    base = _default_tensors(bitwidth_w, bitwidth_a)
    tensors = _tensor_section(doc, base, target, where)
    layers = []
    rules = doc.get("layer_quantize_config", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{where}: layer_quantize_config must be a list of objects.")
    for i, rule in enumerate(rules):
        at = f"{where}: layer_quantize_config[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{at} must be an object.")
        _unknown(rule, LAYER_KEYS, at)
        layer_type, layer_name = rule.get("layer_type"), rule.get("layer_name")
        if (layer_type is None) == (layer_name is None):
            raise ConfigError(f"{at} must name exactly one of layer_type (e.g. 'torch.nn.Conv2d') or layer_name.")
        for key, value in (("layer_type", layer_type), ("layer_name", layer_name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{at}: {key} must be a non-empty string, got {value!r}.")
        _check_quantizable(rule.get("quantizable_data_type"), at)
        own = _tensor_section(rule, tensors, target, at)
        changed = {k: v for k, v in own.items() if v != tensors[k]}
        layers.append(LayerRule(layer_type, layer_name, changed))
    return QuantConfig(target, flags["include_cle"], flags["include_bias_corr"], tensors, layers)


def _tensor_section(doc: dict, base: dict[TensorKind, TensorConfig], target: str, where: str) -> dict:
    overall = doc.get("overall_quantize_config", {})
    per_kind = doc.get("tensor_quantize_config", {})
    if not isinstance(overall, dict):
        raise ConfigError(f"{where}: overall_quantize_config must be an object.")
    if not isinstance(per_kind, dict):
        raise ConfigError(f"{where}: tensor_quantize_config must be an object keyed by tensor kind.")
    _unknown(overall, TENSOR_KEYS, f"{where}: overall_quantize_config")
    _unknown(per_kind, KINDS, f"{where}: tensor_quantize_config")
    out = {}
    for name, kind in KINDS.items():
        settings = per_kind.get(name, {})
        at = f"{where}: tensor_quantize_config.{name}"
        if not isinstance(settings, dict):
            raise ConfigError(f"{at} must be an object.")
        _unknown(settings, TENSOR_KEYS, at)
        out[kind] = _tensor(base[kind], {**overall, **settings}, target, at, kind)
        if (
            target == "DPU"
            and kind in (TensorKind.INPUT, TensorKind.ACTIVATION)
            and out[kind].round_mode is not RoundMode.HALF_UP
        ):
            raise ConfigError(
                f"{at}: round_mode {out[kind].round_mode.value!r} conflicts with target_device DPU, which rounds "
                "activations half up. Fix: remove the key, or set target_device to CPU or GPU (for ONNX Runtime, "
                "half_even matches its QuantizeLinear)."
            )
    return out


def _tensor(base: TensorConfig, settings: dict, target: str, where: str, kind: TensorKind) -> TensorConfig:
    float_scale = settings.get("scale_type", "poweroftwo") == "float"
    per_channel = settings.get("per_channel", False) is True
    for key, (default, what) in _ONLY_DEFAULT.items():
        if key not in settings or settings[key] == default:
            continue
        if target != "DPU" and kind is TensorKind.WEIGHT and key in ("scale_type", "per_channel"):
            if settings[key] not in ("float", True):
                allowed = "'poweroftwo' or 'float'" if key == "scale_type" else "true or false"
                raise ConfigError(f"{where}: {key} must be {allowed}, got {settings[key]!r}.")
            if per_channel and not float_scale:
                raise ConfigError(
                    f"{where}: per_channel with power-of-two scales is not supported yet. Fix: add scale_type: float."
                )
            continue
        if target == "DPU" and key in _NOT_ON_DPU and settings[key] == _NOT_ON_DPU[key]:
            raise ConfigError(
                f"{where}: {key} = {settings[key]!r} conflicts with target_device DPU (the DPU uses power-of-two, "
                "per-tensor, symmetric scales). Fix: remove the key, or set target_device to CPU or GPU."
            )
        raise ConfigError(f"{where}: {key} = {settings[key]!r} ({what}) is not supported yet. Fix: remove the key.")
    bit_width = settings.get("bit_width", base.bit_width)
    if not isinstance(bit_width, int) or isinstance(bit_width, bool) or not 2 <= bit_width <= 16:
        raise ConfigError(f"{where}: bit_width must be an integer from 2 to 16, got {bit_width!r}.")
    mode = settings.get("round_mode")
    if mode is not None and mode not in ROUND_MODES:
        raise ConfigError(f"{where}: round_mode {mode!r} is not one of {', '.join(ROUND_MODES)}.")
    method = settings.get("method", base.calib.method)
    if method not in METHODS:
        raise ConfigError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}.")
    if target == "DPU" and method not in DPU_METHODS:
        raise ConfigError(
            f"{where}: method {method!r} conflicts with target_device DPU, which calibrates with "
            f"{' or '.join(DPU_METHODS)}. Fix: use one of those, or set target_device to CPU or GPU."
        )
    if method not in SUPPORTED_METHODS:
        raise ConfigError(f"{where}: method {method!r} is not supported yet. Fix: use {', '.join(SUPPORTED_METHODS)}.")
    statistic = settings.get("calib_statistic_method", base.calib.statistic)
    if statistic not in STATISTICS:
        raise ConfigError(f"{where}: calib_statistic_method {statistic!r} is not one of {', '.join(STATISTICS)}.")
    percentage = settings.get("percentage", base.calib.percentage)
    if not isinstance(percentage, int | float) or isinstance(percentage, bool) or not 0 < percentage <= 100:
        raise ConfigError(f"{where}: percentage must be a number in (0, 100], got {percentage!r}.")
    return dataclasses.replace(
        base,
        float_scale=float_scale or (base.float_scale and "scale_type" not in settings),
        per_channel=per_channel or (base.per_channel and "per_channel" not in settings),
        bit_width=bit_width,
        round_mode=ROUND_MODES[mode] if mode is not None else base.round_mode,
        calib=CalibSpec(method, statistic, float(percentage)),
    )


def _check_quantizable(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: quantizable_data_type must be a list of strings such as ['input', 'weights'].")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ConfigError(f"{where}: quantizable_data_type has unknown kind(s) {unknown}; known: {', '.join(KINDS)}.")
    missing = sorted(set(KINDS) - set(value))
    if missing:
        raise ConfigError(
            f"{where}: leaving {', '.join(missing)} unquantized (quantizable_data_type) is not supported yet. "
            "Fix: list all four kinds or remove the key."
        )


def _unknown(doc: dict, known: Any, where: str) -> None:
    extra = sorted(set(doc) - set(known))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}. Known keys: {', '.join(sorted(known))}."
        )

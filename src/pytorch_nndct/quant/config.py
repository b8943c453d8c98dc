"""The strategy config (SPEC 2.6, VAIQ35 7): the original's `quant_config_file` keys, validated, as typed settings.

`parse_config(doc)` takes the JSON document (a dict) and returns a QuantConfig, or raises ConfigError naming
the key, the value and the fix. Every key of the original is recognised and every value it accepts is
accepted (checked by its conflict rules, `config_rules`), with these differences, all clearer than its
exit(2): an unknown key names the nearest known one; a non-boolean flag is an error, not ignored;
`target_device` defaults to DPU; a layer entry without `quantizable_data_type` covers all four kinds.
Not supported yet (clear errors): `convert_relu6_to_relu` / `convert_silu_to_hswish` true, bit widths
outside 2-16 (2-32 for biases), per-channel inputs/activations, unsigned or asymmetric power-of-two grids,
ONNX opsets below 13. Two keys of our own: `mixed_precision_budget` (quant/mixed.py), the number (int) or
fraction (float below 1) of activation points kept at 16 bits by measured sensitivity; `output_refinement`
(quant/refine.py; absent: on for attention networks of a bounded size), the calibrated steps refined against
the network's output error.

Tensor kinds: "weights", "bias", "activation" (op outputs) and "input" (network inputs; a layer entry's
"input" settings apply to the network inputs the layer reads). On the DPU, network inputs are rounded half up
like activations (as in the original, whose network inputs follow the activation settings), so "input"
round_mode must be the original's std_round there and changes nothing.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .config_rules import check_rules
from .layers import LayerRef, name_matches, type_matches
from .mixed import check_budget
from .refine import AUTO_MAX_GROUPS
from .spec import CalibSpec, DataType, QuantSpec, RoundMode, TensorKind

__all__ = ["ConfigError", "LayerRule", "QuantConfig", "TensorConfig", "parse_config"]

log = logging.getLogger("pytorch_nndct")


class ConfigError(InputError):
    """The strategy config file is invalid or asks for something not supported."""


FLAGS = ("convert_relu6_to_relu", "convert_silu_to_hswish", "include_cle", "include_bias_corr",
         "keep_first_last_layer_accuracy", "keep_add_layer_accuracy", "change_concat_input_fix",
         "change_pool_input_fix")  # fmt: skip
TOP_KEYS = frozenset({*FLAGS, "target_device", "onnx_opset_version", "quantizable_data_type",
                      "mixed_precision_budget", "output_refinement", "overall_quantize_config",
                      "tensor_quantize_config", "layer_quantize_config"})  # fmt: skip
TENSOR_KEYS = frozenset({"datatype", "bit_width", "method", "round_mode", "symmetry", "per_channel", "signed",
                         "narrow_range", "scale_type", "calib_statistic_method", "percentage"})  # fmt: skip
LAYER_KEYS = frozenset(
    {"layer_type", "layer_name", "quantizable_data_type", "overall_quantize_config", "tensor_quantize_config"}
)
KINDS = {k.value: k for k in TensorKind}  # "input", "weights", "bias", "activation"
TARGETS = ("DPU", "CPU", "GPU", "FLEXML")
MIN_OPSET = 13  # per-axis DequantizeLinear, Split with sizes as an input, bfloat16 Cast
DATATYPES = {d.value: d for d in DataType}
METHODS = ("diffs", "maxmin", "percentile", "mse", "entropy")
STATISTICS = ("modal", "max", "mean", "median")
SCALE_TYPES = ("poweroftwo", "float")
ROUND_MODES = {"half_even": RoundMode.HALF_EVEN, "half_up": RoundMode.HALF_UP, "half_down": RoundMode.HALF_DOWN,
               "std_round": RoundMode.HALF_AWAY}  # fmt: skip
_BOOLS = ("symmetry", "per_channel", "signed", "narrow_range")
_MAX_BITS = {"weights": 16, "input": 16, "activation": 16, "bias": 32}


@dataclass(frozen=True)
class TensorConfig:
    """How one kind of tensor is quantized."""

    bit_width: int = 8
    round_mode: RoundMode = RoundMode.HALF_UP
    calib: CalibSpec = field(default_factory=CalibSpec)
    float_scale: bool = False
    per_channel: bool = False
    symmetric: bool = True
    signed: bool = True
    narrow_range: bool = False
    datatype: DataType = DataType.INT

    def spec(self) -> QuantSpec:
        return QuantSpec(
            self.bit_width,
            self.signed,
            self.round_mode,
            float_scale=self.float_scale,
            per_channel=self.per_channel,
            symmetric=self.symmetric,
            narrow_range=self.narrow_range,
            dtype=self.datatype,
        )


@dataclass(frozen=True)
class LayerRule:
    """A per-layer override: layers matched by type or by name take these settings for the kinds listed."""

    layer_type: str | None
    layer_name: str | None
    tensors: dict[TensorKind, TensorConfig]

    def matches(self, scope: str, module_type: type | None) -> bool:
        return self.matches_ref(LayerRef(scope=scope, module_type=module_type))

    def matches_ref(self, ref: LayerRef) -> bool:
        if self.layer_name is not None:
            return name_matches(self.layer_name, ref)
        return self.layer_type is not None and type_matches(self.layer_type, ref)


@dataclass
class QuantConfig:
    """All settings of one quantization run; `QuantConfig.default(bw_w, bw_a)` is the original's default."""

    target_device: str = "DPU"
    include_cle: bool = True
    include_bias_corr: bool = True
    tensors: dict[TensorKind, TensorConfig] = field(default_factory=dict)
    layers: list[LayerRule] = field(default_factory=list)
    onnx_opset_version: int | None = None  # None: the exporter's default
    change_concat_input_fix: bool = False  # concat inputs take the concat output's fix position
    change_pool_input_fix: bool = False  # pooling inputs take the pooling output's fix position
    mixed_precision_budget: int | float = 0  # activation points kept at 16 bits by sensitivity (quant/mixed.py)
    output_refinement: bool | None = None  # steps refined against the output error (quant/refine.py); None: auto

    @staticmethod
    def default(bitwidth_w: int = 8, bitwidth_a: int = 8) -> QuantConfig:
        return QuantConfig(tensors=_default_tensors(bitwidth_w, bitwidth_a))

    @property
    def only_int(self) -> bool:
        """True when every tensor is an integer (the original then adjusts fix positions at export)."""
        kinds = [*self.tensors.values(), *(t for rule in self.layers for t in rule.tensors.values())]
        return all(t.datatype.is_int for t in kinds)

    def tensor(
        self,
        kind: TensorKind,
        scope: str = "",
        module_type: type | None = None,
        refs: list[LayerRef] | None = None,
    ) -> TensorConfig:
        """The settings for a tensor of `kind` in a layer (`refs`: the nodes it belongs to; else the module at
        `scope`). A rule naming the layer beats one naming its type, and among those the last one wins."""
        refs = refs if refs is not None else [LayerRef(scope=scope, module_type=module_type)]
        chosen, by_name = self.tensors[kind], False
        for rule in self.layers:
            if kind not in rule.tensors or (by_name and rule.layer_name is None):
                continue
            if any(rule.matches_ref(r) for r in refs):
                chosen, by_name = rule.tensors[kind], by_name or rule.layer_name is not None
        return chosen


# ------------------------------------------------------------------ raw settings (the original's keys)
def _raw_defaults(bitwidth_w: int, bitwidth_a: int) -> dict[str, dict[str, Any]]:
    base = {"datatype": "int", "method": "diffs", "symmetry": True, "per_channel": False, "signed": True,
            "narrow_range": False, "scale_type": "poweroftwo", "percentage": 99.99}  # fmt: skip
    return {
        "weights": {**base, "bit_width": bitwidth_w, "round_mode": "std_round", "calib_statistic_method": None},
        "bias": {**base, "bit_width": bitwidth_a, "round_mode": "std_round", "calib_statistic_method": None},
        "input": {**base, "bit_width": bitwidth_a, "round_mode": None, "calib_statistic_method": "modal"},
        "activation": {**base, "bit_width": bitwidth_a, "round_mode": "half_up", "calib_statistic_method": "modal"},
    }


def _to_tensor(kind: str, raw: dict[str, Any], target: str) -> TensorConfig:
    float_scale = raw["scale_type"] == "float"
    method = raw["method"]
    if kind == "input" and not float_scale and method == "diffs":
        method = "maxmin"  # network inputs: one candidate (the original's scope 1 for input nodes)
    if raw["round_mode"] is None or (kind == "input" and target == "DPU"):
        mode = RoundMode.HALF_UP  # network inputs round like the DPU's activations
    else:
        mode = ROUND_MODES[raw["round_mode"]]
    return TensorConfig(
        raw["bit_width"],
        mode,
        CalibSpec(method, raw["calib_statistic_method"] or "modal", float(raw["percentage"])),
        float_scale,
        raw["per_channel"],
        raw["symmetry"],
        raw["signed"],
        raw["narrow_range"],
        DATATYPES[raw["datatype"]],
    )


def _default_tensors(bitwidth_w: int, bitwidth_a: int) -> dict[TensorKind, TensorConfig]:
    raw = _raw_defaults(bitwidth_w, bitwidth_a)
    return {KINDS[k]: _to_tensor(k, v, "DPU") for k, v in raw.items()}


# ------------------------------------------------------------------ parsing
def parse_config(doc: Any, bitwidth_w: int = 8, bitwidth_a: int = 8, where: str = "quant_config_file") -> QuantConfig:
    """Validate the config document and build the settings (defaults from `bitwidth_w` / `bitwidth_a`)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {type(doc).__name__}.")
    _unknown(doc, TOP_KEYS, where)
    target = doc.get("target_device", "DPU")
    if target not in TARGETS:
        raise ConfigError(
            f"{where}: target_device {target!r} is not one of {', '.join(TARGETS)}.{_near(target, TARGETS)}"
        )
    flags = _flags(doc, where)
    opset = doc.get("onnx_opset_version")
    if opset == -1 and not isinstance(opset, bool):  # the original's "latest stable": our default opset
        opset = None
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET):
        raise ConfigError(
            f"{where}: onnx_opset_version {opset!r}: the ONNX export needs an integer opset of {MIN_OPSET} or newer. "
            "Fix: use 13 or later (the original's examples use 14), or remove the key for the default."
        )
    _kinds_list(doc.get("quantizable_data_type"), where)  # the original accepts and ignores it at the top level
    raw = _raw_defaults(bitwidth_w, bitwidth_a)
    _apply_sections(doc, raw, where)
    check_rules(target, raw, where, ConfigError)
    _own_limits(raw, target, where)
    tensors = {KINDS[k]: _to_tensor(k, v, target) for k, v in raw.items()}
    layers = [_layer(rule, i, raw, target, where) for i, rule in enumerate(_rules_list(doc, where))]
    budget = check_budget(doc.get("mixed_precision_budget", 0), f"{where}: mixed_precision_budget", ConfigError)
    refinement = doc.get("output_refinement")
    if refinement is not None and not isinstance(refinement, bool):
        raise ConfigError(
            f"{where}: output_refinement must be true or false (or absent: on for attention networks of at most "
            f"{AUTO_MAX_GROUPS} quantization points), got {refinement!r}."
        )
    return QuantConfig(target, flags["include_cle"], flags["include_bias_corr"], tensors, layers, opset,
                       flags["change_concat_input_fix"], flags["change_pool_input_fix"], budget,
                       refinement)  # fmt: skip


def _flags(doc: dict, where: str) -> dict[str, bool]:
    defaults = {"include_cle": True, "include_bias_corr": True}
    flags = {}
    for key in FLAGS:
        value = doc.get(key, defaults.get(key, False))
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}.")
        flags[key] = value
    for key in ("convert_relu6_to_relu", "convert_silu_to_hswish"):
        if flags[key]:
            raise ConfigError(f"{where}: {key}: true is not supported yet. Fix: remove the key or set it to false.")
    for key in ("keep_first_last_layer_accuracy", "keep_add_layer_accuracy"):
        if flags[key]:
            log.info("%s: true has no effect (as in vai_q_pytorch 3.5)", key)
    return flags


def _rules_list(doc: dict, where: str) -> list[dict]:
    rules = doc.get("layer_quantize_config", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ConfigError(f"{where}: layer_quantize_config must be a list of objects.")
    return rules


def _layer(rule: dict, i: int, global_raw: dict, target: str, where: str) -> LayerRule:
    at = f"{where}: layer_quantize_config[{i}]"
    _unknown(rule, LAYER_KEYS, at)
    layer_type, layer_name = rule.get("layer_type"), rule.get("layer_name")
    if (layer_type is None) == (layer_name is None):
        raise ConfigError(f"{at} must name exactly one of layer_type (e.g. 'torch.nn.Conv2d') or layer_name.")
    for key, value in (("layer_type", layer_type), ("layer_name", layer_name)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{at}: {key} must be a non-empty string, got {value!r}.")
    at = f"{at} ({'layer_type' if layer_type else 'layer_name'} {layer_type or layer_name!r})"
    kinds = _kinds_list(rule.get("quantizable_data_type"), at) or list(KINDS)
    extra = sorted(set(rule.get("tensor_quantize_config") or {}) & set(KINDS) - set(kinds))
    if extra:
        raise ConfigError(
            f"{at}: tensor_quantize_config sets {', '.join(extra)}, which quantizable_data_type does not list. "
            f"Fix: add {', '.join(map(repr, extra))} to quantizable_data_type, or remove those settings."
        )
    raw = {k: dict(global_raw[k]) for k in kinds}  # each listed kind starts from the global settings
    _apply_sections(rule, raw, at)
    check_rules(target, raw, at, ConfigError)
    _own_limits(raw, target, at)
    return LayerRule(layer_type, layer_name, {KINDS[k]: _to_tensor(k, v, target) for k, v in raw.items()})


def _apply_sections(doc: dict, raw: dict[str, dict[str, Any]], where: str) -> None:
    """overall_quantize_config onto every kind in `raw`, then tensor_quantize_config per kind (in place)."""
    overall = doc.get("overall_quantize_config") or {}
    per_kind = doc.get("tensor_quantize_config") or {}
    if not isinstance(overall, dict):
        raise ConfigError(f"{where}: overall_quantize_config must be an object.")
    if not isinstance(per_kind, dict):
        raise ConfigError(f"{where}: tensor_quantize_config must be an object keyed by tensor kind.")
    _unknown(overall, TENSOR_KEYS, f"{where}: overall_quantize_config")
    _unknown(per_kind, KINDS, f"{where}: tensor_quantize_config")
    for kind in raw:
        _apply(kind, overall, raw[kind], f"{where}: overall_quantize_config")
    for kind, settings in per_kind.items():
        at = f"{where}: tensor_quantize_config.{kind}"
        if not isinstance(settings, dict):
            raise ConfigError(f"{at} must be an object.")
        _unknown(settings, TENSOR_KEYS, at)
        if kind in raw:
            _apply(kind, settings, raw[kind], at)


def _choice(value: Any, allowed: Any, key: str, where: str) -> Any:
    if value not in allowed:
        raise ConfigError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}.{_near(value, allowed)}")
    return value


def _apply(kind: str, settings: dict, raw: dict[str, Any], where: str) -> None:
    """One section's keys onto one kind's settings, each value checked as the original checks it."""
    if "datatype" in settings:
        raw["datatype"] = _choice(settings["datatype"], DATATYPES, "datatype", where)
    if "bit_width" in settings:
        bw = settings["bit_width"]
        if not isinstance(bw, int) or isinstance(bw, bool) or not 0 <= bw <= 32:
            raise ConfigError(f"{where}: bit_width must be an integer from 0 to 32, got {bw!r}.")
        raw["bit_width"] = bw
    for key, allowed in (("method", METHODS), ("round_mode", ROUND_MODES), ("scale_type", SCALE_TYPES)):
        if key in settings:
            raw[key] = _choice(settings[key], allowed, key, where)
    for key in _BOOLS:
        if key in settings:
            if not isinstance(settings[key], bool):
                raise ConfigError(f"{where}: {key} must be true or false, got {settings[key]!r}.")
            raw[key] = settings[key]
    if kind in ("input", "activation") and "calib_statistic_method" in settings:  # ignored for parameters
        raw["calib_statistic_method"] = _choice(settings["calib_statistic_method"], STATISTICS,
                                                "calib_statistic_method", where)  # fmt: skip
    if raw["method"] == "percentile" and "percentage" in settings:  # only read for the percentile method
        p = settings["percentage"]
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0 < p <= 100:
            raise ConfigError(f"{where}: percentage must be a number in (0, 100], got {p!r}.")
        raw["percentage"] = float(p)


def _own_limits(raw: dict[str, dict[str, Any]], target: str, where: str) -> None:
    """What this package cannot do yet, after the original's own rules passed."""
    for kind, s in raw.items():
        if s["datatype"] != "int":
            continue
        at = f"{where}: {kind}"
        if not 2 <= s["bit_width"] <= _MAX_BITS[kind]:
            raise ConfigError(
                f"{at}: bit_width must be an integer from 2 to {_MAX_BITS[kind]} here, got {s['bit_width']} (the "
                "original accepts 0 to 32; other widths are not supported yet). Fix: use a bit width in that range."
            )
        if s["per_channel"] and kind != "weights":
            raise ConfigError(f"{at}: per_channel = true is not supported yet (only for weights). Fix: remove the key.")
        if s["scale_type"] == "poweroftwo" and not (s["signed"] and s["symmetry"]):
            key = "signed" if not s["signed"] else "symmetry"
            raise ConfigError(
                f"{at}: {key} = false with power-of-two scales is not supported yet. Fix: remove the key, or use "
                "scale_type 'float' with target_device CPU or GPU."
            )


def _kinds_list(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: quantizable_data_type must be a list of strings such as ['input', 'weights'].")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ConfigError(
            f"{where}: quantizable_data_type has unknown kind(s) {unknown}; known: {', '.join(KINDS)}."
            + _near(unknown[0], KINDS)
        )
    return list(dict.fromkeys(value))


def _near(value: Any, known: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _unknown(doc: dict, known: Any, where: str) -> None:
    extra = sorted(set(doc) - set(known))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}. Known keys: {', '.join(sorted(known))}."
            + _near(extra[0], known)
        )

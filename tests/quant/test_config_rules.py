"""The original's conflict rules (VAIQ35 7.1, one test per rule), key typos, and the shipped configs' settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytorch_nndct.quant.config import ConfigError, parse_config
from pytorch_nndct.quant.config_rules import RULES
from pytorch_nndct.quant.layers import LayerRef
from pytorch_nndct.quant.spec import DataType, RoundMode, TensorKind

CONFIGS = Path(__file__).parents[1] / "configs"
W, B, IN, A = TensorKind.WEIGHT, TensorKind.BIAS, TensorKind.INPUT, TensorKind.ACTIVATION


def _kinds(**kinds) -> dict:
    return {"tensor_quantize_config": kinds}


# (target, settings, the key named, the rule's reason): each breaks exactly one rule
CASES = {
    "dpu-bias-activation-bit-width": ("DPU", _kinds(bias={"bit_width": 16}), "bit_width", "bit widths must be equal"),
    "dpu-symmetric": ("DPU", {"overall_quantize_config": {"symmetry": False}}, "symmetry", "quantizes symmetrically"),
    "dpu-method": ("DPU", _kinds(weights={"method": "mse"}), "method", "calibrates with diffs or maxmin"),
    "dpu-per-tensor": ("DPU", _kinds(weights={"per_channel": True}), "per_channel", "quantizes per tensor"),
    "dpu-power-of-two": ("DPU", _kinds(weights={"scale_type": "float"}), "scale_type", "power-of-two scales"),
    "dpu-narrow-range": ("DPU", _kinds(weights={"narrow_range": True}), "narrow_range", "full integer range"),
    "dpu-modal": ("DPU", _kinds(activation={"calib_statistic_method": "max"}), "calib_statistic_method",
                  "most frequent fix position"),
    "dpu-activation-half-up": ("DPU", _kinds(activation={"round_mode": "half_even"}), "round_mode",
                               "rounds activations half up"),
    "dpu-std-round": ("DPU", _kinds(input={"round_mode": "half_up"}), "round_mode", "with std_round"),
    "cpu-per-channel-weights-only": ("CPU", _kinds(bias={"per_channel": True}), "per_channel", "only for weights"),
    "cpu-per-channel-float-maxmin": ("GPU", _kinds(weights={"per_channel": True, "scale_type": "float"}), "method",
                                     "per-channel float scales are calibrated with maxmin"),
    "cpu-per-channel-pow2-method": ("CPU", _kinds(weights={"per_channel": True, "method": "entropy"}), "method",
                                    "per-channel power-of-two scales are calibrated with diffs or maxmin"),
    "cpu-per-channel-pow2-symmetric": ("CPU", _kinds(weights={"per_channel": True, "symmetry": False}), "symmetry",
                                       "per-channel power-of-two scales are symmetric"),
    "cpu-per-channel-pow2-signed": ("GPU", _kinds(weights={"per_channel": True, "signed": False}), "signed",
                                    "per-channel power-of-two scales are signed"),
    "cpu-float-method": ("CPU", _kinds(weights={"scale_type": "float"}), "method",
                         "per-tensor float scales are calibrated with maxmin, percentile, mse or entropy"),
    "cpu-float-statistic": ("CPU", _kinds(activation={"scale_type": "float", "method": "maxmin"}),
                            "calib_statistic_method", "combined over batches by max, mean or median"),
    "cpu-float-asymmetric-maxmin": ("GPU", _kinds(activation={"scale_type": "float", "method": "entropy",
                                                              "symmetry": False, "calib_statistic_method": "max"}),
                                    "symmetry", "asymmetric float scales are calibrated with maxmin only"),
    "cpu-pow2-method": ("CPU", _kinds(weights={"method": "percentile"}), "method",
                        "per-tensor power-of-two scales are calibrated with diffs or maxmin"),
    "cpu-pow2-symmetric": ("CPU", _kinds(activation={"symmetry": False}), "symmetry", "power-of-two scales are symm"),
    "cpu-pow2-signed": ("GPU", _kinds(activation={"signed": False}), "signed", "power-of-two scales are signed"),
    "cpu-pow2-modal": ("CPU", _kinds(activation={"calib_statistic_method": "mean"}), "calib_statistic_method",
                       "keep the most frequent fix position"),
}  # fmt: skip


def test_every_rule_has_a_case():
    reasons = [case[3] for case in CASES.values()]
    for rule in RULES:
        assert sum(r in rule.why for r in reasons) >= 1, rule.why


@pytest.mark.parametrize("case", sorted(CASES))
def test_conflict_is_refused_naming_the_key_and_the_fix(case):
    target, doc, key, why = CASES[case]
    with pytest.raises(ConfigError) as err:
        parse_config({"target_device": target, **doc}, where="cfg.json")
    message = str(err.value)
    assert message.startswith("cfg.json: ") and f"{key} = " in message and why in message, message
    assert f"conflicts with target_device {target}" in message and "Fix: " in message, message
    try:  # FLEXML has no rules, as in the original; only our own limits remain
        parse_config({"target_device": "FLEXML", **doc})
    except ConfigError as limit:
        assert "not supported yet" in str(limit) and "conflicts" not in str(limit)


def test_rules_apply_to_the_kinds_a_layer_lists():
    entry = {
        "layer_type": "Conv2d",
        "quantizable_data_type": ["weights"],
        "overall_quantize_config": {"per_channel": True},
    }
    with pytest.raises(ConfigError, match=r"layer_quantize_config\[0\] \(layer_type 'Conv2d'\): weights: per_channel"):
        parse_config({"layer_quantize_config": [entry]})
    entry["quantizable_data_type"] = ["bias"]  # bias settings are checked, weights keep the global (valid) ones
    with pytest.raises(ConfigError, match=r"bias: per_channel = true conflicts with target_device DPU"):
        parse_config({"layer_quantize_config": [entry]})
    # float data types are not checked (gemm88: float32 bias and activation next to int8 weights on the DPU)
    ok = {"layer_type": "Linear", "quantizable_data_type": ["bias"], "overall_quantize_config": {"datatype": "float32"}}
    assert parse_config({"layer_quantize_config": [ok]}).layers[0].tensors[B].datatype is DataType.FLOAT32


@pytest.mark.parametrize(
    ("doc", "hint"),
    [
        ({"include_clee": True}, "'include_cle'"),
        ({"onnx_opset": 14}, "'onnx_opset_version'"),
        ({"overall_quantize_config": {"bitwidth": 8}}, "'bit_width'"),
        ({"tensor_quantize_config": {"weight": {}}}, "'weights'"),
        ({"tensor_quantize_config": {"bias": {"scaletype": "float"}}}, "'scale_type'"),
        ({"layer_quantize_config": [{"layer_typ": "Conv2d"}]}, "'layer_type'"),
        ({"overall_quantize_config": {"method": "maxmim"}}, "'maxmin'"),
        ({"target_device": "CPUU"}, "'CPU'"),
    ],
)
def test_typo_names_the_nearest_key(doc, hint):
    with pytest.raises(ConfigError, match=f"Did you mean {hint}"):
        parse_config(doc)


def test_top_level_keys_of_the_original():
    config = parse_config({"target_device": "FLEXML", "onnx_opset_version": 14, "change_concat_input_fix": True,
                           "change_pool_input_fix": True, "keep_first_last_layer_accuracy": True,
                           "keep_add_layer_accuracy": True, "quantizable_data_type": ["input"]})  # fmt: skip
    assert (config.target_device, config.onnx_opset_version) == ("FLEXML", 14)
    assert config.change_concat_input_fix and config.change_pool_input_fix
    assert config.tensors[A].datatype is DataType.INT  # top-level quantizable_data_type is ignored, as there
    for doc, message in (
        ({"include_cle": 1}, "include_cle must be true or false"),
        ({"change_pool_input_fix": "yes"}, "change_pool_input_fix must be true or false"),
        ({"onnx_opset_version": 12}, "opset of 13 or newer"),
        ({"onnx_opset_version": "14"}, "integer opset"),
        ({"convert_silu_to_hswish": True}, "not supported yet"),
        ({"overall_quantize_config": {"bit_width": 33}}, "from 0 to 32"),
        ({"tensor_quantize_config": {"bias": {"bit_width": 40}}}, "from 0 to 32"),
        ({"target_device": "CPU", "tensor_quantize_config": {"activation": {"bit_width": 24}}}, "from 2 to 16"),
        ({"overall_quantize_config": {"signed": "no"}}, "signed must be true or false"),
        ({"overall_quantize_config": {"datatype": "int8"}}, "datatype 'int8' is not one of"),
        ({"overall_quantize_config": {"method": "percentile", "percentage": 120}}, r"percentage must be .* \(0, 100\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(doc)
    # percentage is only read for the percentile method; statistics only for inputs and activations
    parse_config({"target_device": "CPU", "overall_quantize_config": {"percentage": "x"}})
    parse_config({"tensor_quantize_config": {"weights": {"calib_statistic_method": "median"}}})


def test_bias_takes_32_bits_on_gpu():
    config = parse_config(json.loads((CONFIGS / "gpu_quant_config.json").read_text()))
    assert config.tensors[B].bit_width == 32 and config.tensors[B].spec().qmax == 2**31 - 1


def _shipped(name: str):
    return parse_config(json.loads((CONFIGS / f"{name}.json").read_text()), where=name)


def test_shipped_configs_settings():
    c = _shipped("int_config")
    assert c.target_device == "CPU" and c.onnx_opset_version == 14 and c.only_int
    assert all(t.float_scale and t.round_mode is RoundMode.HALF_EVEN and t.calib.method == "maxmin"
               for t in c.tensors.values())  # fmt: skip
    assert c.tensors[A].calib.statistic == "max"
    c = _shipped("bfloat16_config")
    assert {t.datatype for t in c.tensors.values()} == {DataType.BFLOAT16} and not c.only_int
    c = _shipped("mix_precision_config")
    assert c.tensors[B].datatype is DataType.FLOAT16 and c.tensors[W].datatype is DataType.BFLOAT16
    conv = LayerRef(scope="layer1.0.conv1", module_type=None, op=None, path=None)
    conv_type = c.layers[0]
    assert (
        conv_type.tensors[A].round_mode is RoundMode.HALF_UP and conv_type.tensors[W].round_mode is RoundMode.HALF_AWAY
    )
    assert c.layers[1].tensors[W].bit_width == 16 and c.layers[1].tensors[W].per_channel
    assert not conv_type.matches_ref(conv)  # no op or module type given
    c = _shipped("gpu_quant_config")
    assert c.target_device == "GPU" and c.tensors[W].per_channel and c.tensors[A].calib.statistic == "median"
    c = _shipped("gemm88_config")
    assert c.target_device == "DPU" and c.tensors[A].datatype is DataType.FLOAT32 and not c.include_cle
    linear, matmul = c.layers
    assert linear.tensors[W].datatype is DataType.INT and linear.tensors[B].datatype is DataType.FLOAT32
    assert set(matmul.tensors) == {IN, A} and matmul.tensors[IN].datatype is DataType.INT
    c = _shipped("uif")
    assert c.target_device == "DPU" and c.change_concat_input_fix and c.change_pool_input_fix
    c = _shipped("pytorch_quantize_config")
    assert c.tensors[A].calib.method == "mse" and c.tensors[W].calib.method == "maxmin" and not c.include_bias_corr
    conv_type, conv1 = c.layers
    assert set(conv_type.tensors) == {W, B, A} and conv_type.tensors[A].calib.method == "entropy"
    assert conv1.tensors[A].round_mode is RoundMode.HALF_UP and conv1.tensors[A].calib.method == "maxmin"


def test_layer_kinds_not_listed_keep_the_global_settings():
    from torch import nn

    c = _shipped("pytorch_quantize_config")
    ref = [LayerRef("conv2d_1", None, "layer1.0.conv1", nn.Conv2d, None)]
    assert c.tensor(A, refs=ref).calib.method == "entropy"  # the Conv2d entry lists activation
    assert c.tensor(IN, refs=ref) == c.tensors[IN]  # it does not list input: the global settings stay
    assert c.tensor(W, refs=ref).per_channel and not c.tensors[W].per_channel

"""ONNX export of the CPU/GPU numerics (float steps, zero points, unsigned and narrow grids, wide grids,
float data types, per-channel power-of-two weights): onnxruntime agrees with the simulation point by point."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from onnx_check import compare
from test_xmodel import CASES, _quantize

from pytorch_nndct.errors import NndctError
from pytorch_nndct.export.onnx_qdq import build_onnx

FLOAT8 = {"bit_width": 8, "method": "maxmin", "round_mode": "half_even", "scale_type": "float",
          "calib_statistic_method": "max"}  # fmt: skip


def _config(**kinds) -> dict:
    return {"target_device": "CPU", "onnx_opset_version": 14, "overall_quantize_config": FLOAT8,
            "tensor_quantize_config": kinds}  # fmt: skip


NUMERICS = {
    "asymmetric": _config(activation={"symmetry": False}),
    "unsigned": _config(activation={"signed": False}),
    "narrow": {**_config(), "overall_quantize_config": {**FLOAT8, "narrow_range": True}},
    "histogram": _config(activation={"method": "entropy", "calib_statistic_method": "mean"},
                         input={"method": "percentile", "percentage": 99.9, "calib_statistic_method": "median"}),
    "wide": _config(activation={"bit_width": 16}, input={"bit_width": 12}, bias={"bit_width": 32}),
    "float16": _config(activation={"datatype": "float16"}, weights={"per_channel": True}),
    "pow2_per_channel": {"target_device": "GPU", "tensor_quantize_config": {
        "weights": {"per_channel": True}, "input": {"round_mode": "half_even"},
        "activation": {"round_mode": "half_even"}}},
    "asym_weights_4bit": _config(weights={"symmetry": False, "bit_width": 4}, activation={"bit_width": 6}),
}  # fmt: skip


@pytest.mark.parametrize("case", ["digits", "shuffle_slice"])
@pytest.mark.parametrize("name", sorted(NUMERICS))
def test_onnxruntime_agrees_point_by_point(name, case, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(NUMERICS[name]))
    model, example, batches = CASES[case]()
    quantizer = _quantize(model, example, batches, tmp_path, quant_config_file=config)
    path = quantizer.export_onnx_model()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    report = compare(quantizer, path, torch.randn(5, *example.shape[1:]))
    print(f"{name} {case}: {report.points} points, worst {report.worst_lsb} LSB / {report.worst_rel:.3g} ulp; "
          f"end to end {report.end_lsb} LSB, {100 * report.end_equal:.1f}% equal")  # fmt: skip
    assert report.points > 0 and report.worst_lsb <= 1 and report.worst_rel <= 1, report.unequal
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    zero_points = {int(v) for k, v in inits.items() if k.startswith("zero_uint8_")}
    if name == "asymmetric":
        assert zero_points - {128}, "asymmetric activations need their own zero points"
    if name == "unsigned":
        assert 0 in zero_points
    if name == "narrow":  # [-127, 127]: the uint8 codes are clipped to [1, 255] between Q and DQ
        assert "u8_1" in inits and "Clip" in ops
    if name == "wide":
        assert "Round" in ops and any(v.dtype == np.int32 and v.ndim == 1 for v in inits.values())
    if name == "float16":
        assert any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16 for n in proto.graph.node)
    if name == "pow2_per_channel":
        scales = [v for k, v in inits.items() if k.endswith("weight_scale") and v.ndim == 1]
        assert scales and all(np.all(np.log2(s) == np.round(np.log2(s))) for s in scales)
    if name == "asym_weights_4bit":
        assert any(k.endswith("weight_uint8") and v.max() <= 15 for k, v in inits.items())


def test_opset_version_from_the_config_and_limits(tmp_path):
    model, example, batches = CASES["digits"]()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"target_device": "CPU", "onnx_opset_version": 13}))
    quantizer = _quantize(model, example, batches, tmp_path, quant_config_file=config)
    assert onnx.load(str(quantizer.export_onnx_model())).opset_import[0].version == 13
    graph, plan, table = quantizer.export_graph(), quantizer.plan, quantizer.table
    assert plan.onnx_opset_version == 13 and build_onnx(graph, plan, table).opset_import[0].version == 13
    plan = dataclasses.replace(plan, onnx_opset_version=None)
    assert build_onnx(graph, plan, table).opset_import[0].version == 17  # the default
    assert build_onnx(graph, plan, table, opset=21).ir_version >= 10
    for bad in (12, onnx.defs.onnx_opset_version() + 1):
        with pytest.raises(NndctError, match="cannot be exported: this exporter writes opsets 13 to"):
            build_onnx(graph, plan, table, opset=bad)

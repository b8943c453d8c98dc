"""register_custom_op (VAIQ35 6): one opaque op in capture, float in the generated module, its own op type
with its attributes in the .xmodel and ONNX, quantized output only when listed in custom_quant_ops."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn
from wire import read_graph

from pytorch_nndct.apis import torch_quantizer
from pytorch_nndct.errors import InputError
from pytorch_nndct.ir import Op, trace
from pytorch_nndct.utils import register_custom_op


@register_custom_op("ScaleShift", attrs_list=["alpha", "shift"])
def scale_shift(ctx, x, alpha, shift):
    return x * alpha + shift


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return scale_shift(self.b(torch.relu(self.a(x))), 0.5, 0.25)  # the network output: float unless listed


def test_capture_keeps_one_op_with_named_attributes():
    torch.manual_seed(0)
    model, x = WithCustom().eval(), torch.randn(2, 3, 8, 8)
    graph = trace(model, (x,))
    (node,) = graph.find(Op.CUSTOM)
    assert node.attrs["op_type"] == "ScaleShift"
    assert node.attrs["op_attrs"] == {"alpha": 0.5, "shift": 0.25}
    assert not graph.find(Op.MUL)  # the function's insides are not traced


@pytest.mark.parametrize("quantized", [False, True])
def test_custom_op_through_calib_test_and_exports(tmp_path, quantized):
    torch.manual_seed(0)
    model, data = WithCustom().eval(), torch.randn(16, 3, 8, 8)
    kwargs = {"custom_quant_ops": ["ScaleShift"]} if quantized else {}
    calib = torch_quantizer("calib", model, (data[:2],), output_dir=tmp_path, **kwargs)
    with torch.no_grad():
        calib.quant_model(data)
    calib.export_quant_config()
    node = calib.graph.find(Op.CUSTOM)[0]
    assert (node.name in calib.plan.outputs) is quantized
    assert (node.name in calib.plan.float_ops) is not quantized
    test = torch_quantizer("test", model, (data[:2],), output_dir=tmp_path, **kwargs)
    with torch.no_grad():
        out = test.quant_model(data)
    assert torch.allclose(out, model(data), atol=0.2) and not torch.equal(out, model(data))
    source = (tmp_path / "WithCustom.py").read_text()
    assert "nndct_custom.ScaleShift" in source

    _, ops, _ = read_graph(test.export_xmodel().read_bytes())
    (custom,) = [op for op in ops if op.type == "ScaleShift"]
    assert custom.attrs["shift"] == pytest.approx(0.25) and custom.attrs["alpha"] == pytest.approx(0.5)
    assert custom.attrs["data_type"] == "FLOAT32" and custom.attrs["shape"] == [1, 8, 8, 4]
    fixed = {op.args["input"][0] for op in ops if op.type == "fix"}
    assert (custom.name in fixed) is quantized
    assert "ScaleShift" in test.partition_report() and "CPU" in test.partition_report()

    model_onnx = onnx.load(test.export_onnx_model())
    (onnx_node,) = [n for n in model_onnx.graph.node if n.op_type == "ScaleShift"]
    assert onnx_node.domain == "pytorch_nndct.custom"
    assert {a.name for a in onnx_node.attribute} == {"alpha", "shift"}


def test_registration_errors():
    with pytest.raises(InputError, match="built-in op"):
        register_custom_op("conv2d")(lambda ctx, x: x)
    register_custom_op("conv2d", mapping_to_xir=True)  # an op XIR knows: allowed
    with pytest.raises(InputError, match="already registered for"):
        register_custom_op("ScaleShift")(lambda ctx, x: x)
    with pytest.raises(InputError, match="op_type must be an identifier"):
        register_custom_op("my op")
    bad = register_custom_op("ReturnsTwo")(lambda ctx, x: (x, x))
    with pytest.raises(InputError, match="must return exactly one tensor"):
        bad(torch.randn(2))

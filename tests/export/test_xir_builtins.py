"""The .xmodel uses XIR's built-in op wherever one exists (issue 12): types, required attributes and their
AttrValue members as XIR_OPS.md lists them, and no `nndct_*` custom op for an op with a built-in."""

from __future__ import annotations

import pytest
import torch
import torchvision
from builtin_models import builtin_cases
from test_xmodel import as_deployed, check_xmodel

from helpers import calib_then_test
from pytorch_nndct.export.deploy import CUSTOM_REASONS, LOWERINGS, lower
from pytorch_nndct.export.integer import IntValue, run_integer
from pytorch_nndct.export.reference import run_deploy_graph
from pytorch_nndct.export.xir_schema import schema
from pytorch_nndct.ir.ops import Op

# XIR_OPS.md 3-7: the REQUIRED attributes of the built-ins written here, with their AttrValue member.
_I, _IV, _F, _B, _S = "int32_value", "int32_vec_value", "float_value", "bool_value", "string_value"
REQUIRED_ATTRS = {
    "softmax": {"axis": _I},
    "stack": {"axis": _I},
    "concat": {"axis": _I},
    "elu": {"alpha": _F},
    "celu": {"alpha": _F},
    "leaky-relu": {"alpha": _F},
    "groupnorm": {"num_groups": _I, "num_channels": _I, "eps": _F, "affine": _B},
    "instancenorm": {"eps": _F, "affine": _B},
    "strided_slice": {"begin": _IV, "end": _IV, "strides": _IV},
    "reduction_mean": {"axis": _IV, "keep_dims": _B},
    "reduction_max": {"axis": _IV, "keep_dims": _B},
    "reduction_sum": {"axis": _IV, "keep_dims": _B},
    "pad": {"paddings": _IV, "mode": _S},
    "matmul": {"transpose_a": _B, "transpose_b": _B},
    "fix": {"fix_point": _I, "bit_width": _I, "round_mode": _S, "if_signed": _B},
}
REQUIRED_ARGS = {"prelu": ("input", "weight"), "groupnorm": ("input",), "instancenorm": ("input",)}
BINARY = ("add", "sub", "mul", "div", "max", "min")  # REQUIRED_AND_REPEATED input, at least 2


def test_every_op_has_an_xmodel_lowering_or_a_custom_reason():
    both = set(LOWERINGS) & set(CUSTOM_REASONS)
    assert not both, f"ops with a lowering and a custom reason: {sorted(op.value for op in both)}"
    missing = [op.value for op in Op if op not in LOWERINGS and op not in CUSTOM_REASONS]
    assert not missing, f"ops with no xmodel lowering and no reason to be a custom op: {missing}"
    assert all(CUSTOM_REASONS.values())


def _export(case, tmp_path, batch: int = 2) -> list:
    """Calibrate a case (a builtin case's name, or (model, example, batches)), export its .xmodel and read it
    back with our schema: the OPNode messages."""
    model, example, batches = builtin_cases()[case]() if isinstance(case, str) else case
    quantizer = calib_then_test(model, example, batches, tmp_path)[1]
    buf = quantizer.export_xmodel(tmp_path, batch_size=batch).read_bytes()
    check_xmodel(buf, batch)
    return list(schema().Graph.FromString(buf).op_node)


def check_builtins(nodes: list) -> None:
    """Every op of a built-in type carries its required args and attributes, typed as XIR declares them."""
    by_name = {n.op_name: n for n in nodes}
    for n in nodes:
        args = {a.arg_name: list(a.arg_ops) for a in n.args}
        for key, member in REQUIRED_ATTRS.get(n.op_type, {}).items():
            assert key in n.op_attr, f"{n.op_name} ({n.op_type}) lacks the required attribute {key}"
            assert n.op_attr[key].WhichOneof("value") == member, (n.op_name, key, n.op_attr[key])
        for arg in REQUIRED_ARGS.get(n.op_type, ()):
            assert len(args.get(arg, [])) == 1, f"{n.op_name} ({n.op_type}) needs one {arg} op"
        if n.op_type in BINARY:
            assert len(args["input"]) >= 2, f"{n.op_name} ({n.op_type}) has fewer than 2 inputs"
        if n.op_type == "strided_slice":
            lengths = {len(n.op_attr[k].int32_vec_value.value) for k in ("begin", "end", "strides")}
            assert lengths == {len(list(by_name[args["input"][0]].output_tensor.tensor_dim))}
        if n.op_type == "pad":
            assert n.op_attr["mode"].string_value in ("CONSTANT", "REFLECT", "SYMMETRIC")
        if n.op_type == "prelu":
            slopes = list(by_name[args["weight"][0]].output_tensor.tensor_dim)
            assert slopes in ([1], [list(n.output_tensor.tensor_dim)[-1]]), "prelu slopes run along the last dim"


@pytest.mark.parametrize("case", sorted(builtin_cases()))
def test_reference_and_integer_runs_equal_the_simulation(case, tmp_path):
    """Each built-in executes in the reference and integer runs as the simulation computes it: bit for bit."""
    model, example, batches = builtin_cases()[case]()
    quantizer = calib_then_test(model, example, batches, tmp_path)[1]
    x = torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        simulated = quantizer.quant_model(x)
    deploy = lower(quantizer.export_graph(), quantizer.plan, quantizer.table, batch=3)
    last = deploy.ops[-1].name
    out = run_deploy_graph(deploy, [x])[last]
    assert torch.equal(out, as_deployed(simulated, out)), f"max |diff| {(out - simulated).abs().max().item()}"
    value = run_integer(deploy, [x])[last]
    assert isinstance(value, IntValue), "the network output should come out of a fix"
    assert torch.equal(value.to_float(), as_deployed(simulated, out))


def test_cnn_writes_builtins(tmp_path):
    nodes = _export("builtin_cnn", tmp_path)
    types = {n.op_type for n in nodes}
    expected = {"swish", "hard-swish", "hard-tanh", "max", "min", "prelu", "groupnorm", "instancenorm", "elu",
                "div", "exp", "neg", "pad", "strided_slice", "reduction_mean", "reduction_max", "reduction_sum",
                "stack"}  # fmt: skip
    assert expected <= types, f"missing: {sorted(expected - types)}"
    assert not [t for t in types if t.startswith("nndct_")]
    check_builtins(nodes)
    (pad,) = [n for n in nodes if n.op_type == "pad"]
    assert pad.op_attr["mode"].string_value == "REFLECT"


def test_encoder_writes_builtins(tmp_path):
    nodes = _export("tiny_encoder", tmp_path, batch=3)
    types = {n.op_type for n in nodes}
    assert {"gelu", "softmax", "div", "strided_slice", "concat", "matmul"} <= types
    assert not [t for t in types if t.startswith("nndct_")]
    check_builtins(nodes)
    (token,) = [n for n in nodes if n.op_type == "concat" and "expand" in n.op_name]  # the class token, 3 times
    assert len(next(a for a in token.args if a.arg_name == "input").arg_ops) == 3
    select = [n for n in nodes if n.op_type == "strided_slice" and "shrink_axis_mask" in n.op_attr]
    assert len(select) == 1 and select[0].op_attr["shrink_axis_mask"].int32_value == 2
    assert list(select[0].output_tensor.tensor_dim) == [3, 16]


@pytest.mark.parametrize("kind", ["tanh", "floor"])
def test_ops_without_a_matching_builtin_stay_custom(kind, tmp_path):
    def forward(x):
        if kind == "tanh":
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.div(x, 2.0, rounding_mode="floor")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return forward(self.conv(x))

    x = torch.randn(2, 3, 4, 4)
    types = {n.op_type for n in _export((Net().eval(), x, [x]), tmp_path)}
    assert types & {"nndct_gelu", "nndct_div"} and not types & {"gelu", "div"}


def test_vit_writes_builtins(tmp_path):
    """torchvision's ViT: gelu, the class token's select and its unflatten are XIR built-ins; layer norm has none
    (XIR 3.5), and scaled_dot_product_attention is written as matmul / softmax once the IR decomposes it."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    nodes = _export((vit, torch.randn(2, 3, 32, 32), [torch.randn(4, 3, 32, 32)]), tmp_path)
    types = {n.op_type for n in nodes}
    assert {"gelu", "strided_slice", "concat", "matmul", "conv2d"} <= types
    custom = {t for t in types if t.startswith("nndct_")}
    assert custom <= {"nndct_layer_norm", "nndct_aten_scaled_dot_product_attention_default"}, custom
    check_builtins(nodes)

"""The .xmodel: parses, is topologically sound, carries integer-exact consts and consistent NHWC shapes."""

from __future__ import annotations

import hashlib
import logging
import math
import struct

import pytest
import torch
import torchvision
from torch import nn
from wire import read_graph, read_root

from helpers import calib_then_test, golden, prepare_model
from pytorch_nndct.apis import dump_xmodel, torch_quantizer
from pytorch_nndct.errors import NndctError, OutputDirError
from pytorch_nndct.export.deploy import lower, sanitize
from pytorch_nndct.export.xir_schema import make_attr, schema
from pytorch_nndct.export.xmodel import serialize
from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.quant.plan import make_plan
from pytorch_nndct.quant.table import QuantTable
from pytorch_nndct.targets import assign_devices
from quant_process import model_and_data
from small_models import golden_models


def _quantize(model, example, batches, out_dir, **kwargs):
    return calib_then_test(model, example, batches, out_dir, **kwargs)[1]


class ShuffleSlice(nn.Module):
    """Channel split, shuffle (reshape-transpose-reshape), slice, nearest upsampling, asymmetric padding."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.relu(self.stem(x)).chunk(2, dim=1)
        y = torch.cat([left, torch.relu(self.branch(right))], dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = torch.nn.functional.interpolate(y[:, :, 1:7], scale_factor=2.0, mode="nearest")  # 6x8 -> 12x16
        return self.head(torch.nn.functional.pad(y, [1, 0, 0, 2]))


class NormBetweenConvs(nn.Module):
    """conv -> relu -> layer norm -> `float_op` -> conv: ops a DPU cannot run between ones it can."""

    def __init__(self, float_op) -> None:
        super().__init__()
        self.float_op = float_op
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm([4, 6, 6])
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.float_op(self.norm(torch.relu(self.conv(x)))))


def _cases():
    cases = {"digits": lambda: (lambda m, d: (m, d[:2], [d]))(*model_and_data())}
    cases["shuffle_slice"] = lambda: (ShuffleSlice().eval(), torch.randn(2, 3, 8, 8), [torch.randn(8, 3, 8, 8)])
    for name, (model, x) in golden_models().items():
        cases[name] = lambda model=model, x=x: (model, x, [torch.randn(8, *x.shape[1:])])
    for name in ("resnet18", "mobilenet_v2"):

        def make(name=name):
            torch.manual_seed(0)
            model = prepare_model(torchvision.models.get_model(name), (3, 224, 224))
            return model, torch.randn(2, 3, 224, 224), [torch.randn(2, 3, 224, 224)]

        cases[name] = make
    return cases


CASES = _cases()


def simulate_and_lower(case: str, tmp_path, batch: int = 3):
    """Calibrate a case, run the test-mode simulation on a fresh batch, and lower it: (x, simulated, deploy)."""
    from pytorch_nndct.export.deploy import lower

    model, example, batches = CASES[case]()
    quantizer = _quantize(model, example, batches, tmp_path)
    x = torch.randn(batch, *example.shape[1:])
    with torch.no_grad():
        simulated = quantizer.quant_model(x)
    return x, simulated, lower(quantizer.export_graph(), quantizer.plan, quantizer.table, batch=batch)


def as_deployed(simulated: torch.Tensor, deployed: torch.Tensor) -> torch.Tensor:
    """The simulation's output in the deploy graph's layout (a feature-map output is NHWC there)."""
    return simulated.permute(0, 2, 3, 1) if deployed.shape != simulated.shape else simulated


def _out_size(i: int, k: int, s: int, d: int, a: int, b: int, mode: str) -> int:
    if mode == "FLOOR":
        return (i + a + b - d * (k - 1) - 1) // s + 1
    assert mode == "CEIL"
    return math.ceil((i + a + b - d * (k - 1) - 1) / s) + 1


def check_xmodel(buf: bytes, batch: int) -> list:
    _, ops, root = read_graph(buf)
    by_name = {}
    for op in ops:
        assert op.name not in by_name, f"duplicate op {op.name}"
        for arg, producers in op.args.items():
            for p in producers:
                assert p in by_name, f"{op.name}.{arg} names {p}, which is not an earlier op"
        assert op.data_type == 4 and all(d > 0 for d in op.dims)
        by_name[op.name] = op
    assert root == [op.name for op in ops]
    for op in ops:
        inp = [by_name[p] for p in op.args.get("input", [])]
        if op.type == "const":
            data = op.attrs["data"]
            assert len(data) == 4 * math.prod(op.attrs["shape"]) and op.attrs["shape"] == op.dims
        elif op.type == "fix":
            assert op.dims == inp[0].dims and op.attrs["round_mode"] == "DPU_ROUND" and op.attrs["if_signed"]
            if inp[0].type == "const":  # parameters: every value * 2^fp is an integer in range
                values = struct.unpack(f"<{len(inp[0].attrs['data']) // 4}f", inp[0].attrs["data"])
                bw, fp = op.attrs["bit_width"], op.attrs["fix_point"]
                for v in values:
                    q = v * 2.0**fp
                    assert q == int(q) and -(2 ** (bw - 1)) <= q <= 2 ** (bw - 1) - 1, (op.name, v, fp)
        elif op.type == "data":
            assert op.dims[0] == batch and op.attrs["shape"] == op.dims
        elif op.type in ("conv2d", "depthwise-conv2d"):
            w = by_name[op.args["weights"][0]].dims
            n, h, wd, c = inp[0].dims
            kw, kh = op.attrs["kernel"]
            sw, sh = op.attrs["stride"]
            dw, dh = op.attrs["dilation"]
            left, right, top, bottom = op.attrs["pad"]
            oc = w[0] if op.type == "conv2d" else w[0] * c
            assert w[1:3] == [kh, kw]
            assert w[3] == (c // op.attrs["group"] if op.type == "conv2d" else c)
            expected = [
                n,
                _out_size(h, kh, sh, dh, top, bottom, "FLOOR"),
                _out_size(wd, kw, sw, dw, left, right, "FLOOR"),
                oc,
            ]
            assert op.dims == expected, (op.name, op.dims, expected)
            if op.args.get("bias"):
                assert by_name[op.args["bias"][0]].dims == [oc]
        elif op.type in ("maxpool2d", "avgpool2d"):
            n, h, wd, c = inp[0].dims
            kw, kh = op.attrs["kernel"]
            sw, sh = op.attrs["stride"]
            left, right, top, bottom = op.attrs["pad"]
            mode = op.attrs["pad_mode"]
            assert op.dims == [
                n,
                _out_size(h, kh, sh, 1, top, bottom, mode),
                _out_size(wd, kw, sw, 1, left, right, mode),
                c,
            ]
        elif op.type in ("relu", "relu6", "add", "sub", "mul", "hard-sigmoid", "hard-swish", "scale", "sigmoid"):
            assert op.dims == list(torch.broadcast_shapes(*(i.dims for i in inp)))
        elif op.type == "concat":
            axis = op.attrs["axis"] % len(op.dims)
            assert op.dims[axis] == sum(i.dims[axis] for i in inp)
        elif op.type == "matmul":
            a, b = list(inp[0].dims), list(inp[1].dims)
            if op.attrs["transpose_b"]:
                b[-2], b[-1] = b[-1], b[-2]
            assert a[-1] == b[-2] and op.dims == [*torch.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1]]
        elif op.type == "reshape":
            assert math.prod(op.dims) == math.prod(inp[0].dims) and op.attrs["shape"] == op.dims
        elif op.type == "transpose":
            assert op.dims == [inp[0].dims[o] for o in op.attrs["order"]]
    return ops


def _lower_of(quantizer, batch):
    return lower(quantizer.export_graph(), quantizer.plan, quantizer.table, batch)


def _whole_message(deploy, devices=None):
    """The .xmodel built as one protobuf message (the writer streams it op by op instead)."""
    s = schema()
    g = s.Graph(graph_name=sanitize(deploy.name))
    for op in deploy.ops:
        node = g.op_node.add(op_name=op.name, op_type=op.type)
        for key, (kind, value) in op.attrs.items():
            node.op_attr[key].CopyFrom(make_attr(kind, value))
        for arg_name, producers in op.args.items():
            node.args.add(arg_name=arg_name, arg_ops=producers)
        t = node.output_tensor
        t.tensor_name, t.data_type, t.tensor_bit_width = op.name, 4, 32
        t.tensor_dim.extend(op.shape)
    root = read_root(serialize(deploy, devices))  # subgraphs: checked by test_device_subgraphs_...
    g.subg_root.subgraph_name = "root"
    g.subg_root.op_name.extend(root.ops)
    for child in root.children:
        sub = g.subg_root.subg_child.add(subgraph_name=child.name)
        sub.op_name.extend(child.ops)
        sub.subg_attr["device"].CopyFrom(make_attr("string", child.attrs["device"]))
    return g


@pytest.mark.parametrize("case", sorted(CASES))
def test_xmodel_is_sound(case, tmp_path):
    model, example, batches = CASES[case]()
    quantizer = _quantize(model, example, batches, tmp_path)
    for batch in (1, 3):
        path = quantizer.export_xmodel(tmp_path / f"b{batch}", batch_size=batch)
        assert path.name == f"{type(model).__name__}_int.xmodel"
        data = path.read_bytes()
        ops = check_xmodel(data, batch)
        assert schema().Graph.FromString(data) == _whole_message(_lower_of(quantizer, batch))
        types = {op.type for op in ops}
        assert {"data", "const", "fix"} <= types and not any(t.startswith("aten") for t in types)


def _text(buf: bytes) -> str:
    name, ops, _ = read_graph(buf)
    lines = [f"graph {name}"]
    for op in ops:
        attrs = {
            k: (hashlib.md5(v).hexdigest()[:12] if isinstance(v, bytes) else v) for k, v in sorted(op.attrs.items())
        }
        args = ", ".join(f"{k}={v}" for k, v in op.args.items())
        lines.append(f"{op.type} {op.name} {op.dims} ({args}) {attrs}")
    return "\n".join(lines) + "\n"


def test_digits_xmodel_golden(tmp_path):
    model, data = model_and_data()
    quantizer = _quantize(model, data[:2], [data], tmp_path)
    golden("digits_xmodel.txt", _text(quantizer.export_xmodel(tmp_path).read_bytes()))


def test_dump_xmodel_uses_the_last_quantizer(tmp_path):
    model, data = model_and_data()
    quantizer = _quantize(model, data[:2], [data], tmp_path)  # the seed's scripts keep it in a variable
    path = dump_xmodel(tmp_path / "x")
    assert quantizer.mode.name == "TEST"
    assert path.exists() and path.parent.name == "x"


class FixedBatchHead(nn.Module):
    """A classifier whose code fixes the batch at 1: `view(1, -1)` feeds a layer of fixed width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(1, -1))


def test_batch_one_example_exports_at_any_batch(tmp_path):
    model, data = model_and_data()
    quantizer = _quantize(model, data[:1], [data[:4]], tmp_path)
    check_xmodel(quantizer.export_xmodel(tmp_path / "b4", batch_size=4).read_bytes(), 4)


def test_fixed_batch_graph_refuses_another_batch(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    quantizer = _quantize(FixedBatchHead().eval(), x, [x], tmp_path)
    assert quantizer.export_xmodel(tmp_path).exists()
    with pytest.raises(NndctError, match=r"batch size fixed at 1.*batch_size=1"):
        quantizer.export_xmodel(tmp_path, batch_size=4)


def test_export_errors(tmp_path):
    model, data = model_and_data()
    calib = torch_quantizer("calib", model, (data[:2],), output_dir=tmp_path)
    with pytest.raises(NndctError, match=r"needs the calibrated model.*calib mode"):
        calib.export_xmodel()
    with torch.no_grad():
        calib.quant_model(data)
    calib.export_quant_config()
    test = torch_quantizer("test", model, (data[:2],), output_dir=tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        test.export_xmodel(tmp_path / "afile")


def test_unexpressible_op_becomes_a_reported_custom_op(tmp_path, caplog):
    model = NormBetweenConvs(lambda t: torch.cumsum(t, dim=1)).eval()
    x = torch.randn(2, 3, 6, 6)
    quantizer = _quantize(model, x, [x], tmp_path)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        path = quantizer.export_xmodel(tmp_path)
    assert "written as custom ops" in caplog.text
    _, ops, _ = read_graph(path.read_bytes())
    custom = [op for op in ops if op.type.startswith("nndct_")]
    assert {op.type for op in custom} == {"nndct_layer_norm", "nndct_aten_cumsum_default"}
    assert "transpose" in {op.type for op in ops}  # the feature map goes back to NCHW before the float ops
    assert all(op.attrs["data_type"] == "FLOAT32" and op.attrs["shape"] == op.dims for op in custom)
    check_xmodel(path.read_bytes(), 1)


def test_deploy_check_files_equal_the_reference_run(tmp_path):
    import numpy as np

    from pytorch_nndct.export.deploy import lower
    from pytorch_nndct.export.reference import run_deploy_graph

    model, data = model_and_data()
    quantizer = _quantize(model, data[:2], [data], tmp_path)
    with pytest.raises(NndctError, match=r"run quantizer\.quant_model"):
        quantizer.export_xmodel(deploy_check=True)
    with torch.no_grad():
        quantizer.quant_model(data[5:9])
    quantizer.export_xmodel(deploy_check=True)
    folder = tmp_path / "deploy_check_data_int" / "DigitsNet"
    shapes = dict(line.split(": ")[::-1] for line in (folder / "shape.txt").read_text().splitlines())
    deploy = lower(quantizer.export_graph(), quantizer.plan, quantizer.table, 1)
    expected = run_deploy_graph(deploy, [data[5:6]])
    assert set(shapes) == {op.name for op in deploy.ops}
    for op in deploy.ops:
        raw = (folder / f"{op.name}.bin").read_bytes()
        value = expected[op.name]
        assert shapes[op.name] == str(list(value.shape))
        if op.fix is not None:
            ints = np.frombuffer(raw, dtype=np.int8).astype(np.float64)
            assert np.array_equal(ints * 2.0 ** -op.fix[1], value.double().reshape(-1).numpy()), op.name
        else:
            assert np.array_equal(np.frombuffer(raw, dtype=np.float32), value.reshape(-1).numpy()), op.name


def test_partition_report(tmp_path):
    x = torch.randn(2, 3, 6, 6)
    quantizer = _quantize(NormBetweenConvs(torch.sigmoid).eval(), x, [x], tmp_path)
    report = quantizer.partition_report()
    lines = {line.split()[0]: line for line in report.splitlines()[1:-1]}
    assert "DPU" in lines["conv2d_1"] and "DPU" in lines["conv2d_5"] and "DPU" in lines["input_0"]
    assert "CPU" in lines["layer_norm_3"] and "CPU" in lines["sigmoid_4"]
    assert report.splitlines()[-1] == "4 of 6 ops on the DPU, 2 on the CPU"


def test_device_subgraphs_follow_the_target_assignment():
    """With devices, the root subgraph's children split the ops by device (SPEC 5: subg_child = 10, subg_attr = 5)
    and form an acyclic graph; without, the root has no children."""
    torch.manual_seed(0)
    graph = optimize(trace(ShuffleSlice().eval(), (torch.randn(2, 3, 8, 8),)))
    deploy = lower(graph, make_plan(graph), QuantTable(graph.name))
    assignment = assign_devices(graph, "DPUCZDX8G_ISA1_B4096")
    devices = {name: a.device for name, a in assignment.items()}
    assert {"DPU", "CPU", "USER"} <= set(devices.values())  # chunk slices and the 5-D shuffle stay on the CPU
    assert read_root(serialize(deploy)).children == []
    assert schema().Graph.FromString(serialize(deploy, devices)) == _whole_message(deploy, devices)
    root = read_root(serialize(deploy, devices))
    assert root.name == "root" and root.ops == [op.name for op in deploy.ops]
    owner = {}
    for child in root.children:
        assert child.name == f"subgraph_{child.ops[0]}" and child.attrs["device"] in ("DPU", "CPU", "USER")
        for op in child.ops:
            assert op not in owner
            owner[op] = child
    assert set(owner) == set(root.ops)  # the children split the root's ops
    by_name = {op.name: op for op in deploy.ops}
    for name, child in owner.items():
        assert child.attrs["device"] == devices.get(by_name[name].node, "CPU")
    conv_children = {owner[op.name].attrs["device"] for op in deploy.ops if op.type == "conv2d"}
    assert conv_children == {"DPU"} and owner[deploy.ops[0].name].attrs["device"] == "USER"
    edges = {(owner[i].name, owner[op.name].name) for op in deploy.ops for arg in op.args.values() for i in arg}
    order = {child.name: k for k, child in enumerate(root.children)}
    assert all(order[a] <= order[b] for a, b in edges)  # children listed in a topological order: no cycle

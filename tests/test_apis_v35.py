"""vai_q_pytorch 3.5's torch_quantizer surface: its signature and both releases' positional orders, keyword
inputs, quantize/test/deploy in one process, every export's options, TorchScript, and clear errors."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pytorch_nndct.apis import load_vai_ops, torch_quantizer
from pytorch_nndct.errors import InputError, NndctError
from pytorch_nndct.export.xir_schema import schema
from quant_process import model_and_data

V35_ORDER = [
    "quant_mode", "module", "input_args", "input_kwargs", "state_dict_file", "output_dir", "bitwidth", "mix_bit",
    "device", "lstm", "app_deploy", "qat_proc", "custom_quant_ops", "quant_config_file", "target", "dynamo",
]  # fmt: skip


def _calibrate(model, data, out, **kwargs):
    q = torch_quantizer("calib", model, (data[:4],), output_dir=out, **kwargs)
    with torch.no_grad():
        for batch in data.split(16):
            q.quant_model(batch)
    q.export_quant_config()
    return q


def test_signature_is_the_originals_in_its_order():
    params = list(inspect.signature(torch_quantizer.__init__).parameters)[1:]
    assert params[: len(V35_ORDER)] == V35_ORDER
    assert {"bitwidth_w", "bitwidth_a"} <= set(params)  # 1.2 scripts' keywords


def test_both_positional_orders(tmp_path):
    model, data = model_and_data()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    fresh = model_and_data()[0]
    with torch.no_grad():
        fresh.stem[0].weight.zero_()
    # 1.2: (quant_mode, module, input_args, state_dict_file, output_dir, bitwidth_w, bitwidth_a)
    q12 = torch_quantizer("calib", fresh, (data[:4],), str(tmp_path / "w.pth"), str(tmp_path / "a"), 6, 7)
    assert q12.output_dir == tmp_path / "a" and (q12.bitwidth_w, q12.bitwidth_a) == (6, 7)
    assert torch.equal(fresh.stem[0].weight, model.stem[0].weight)  # the state dict was loaded
    # 3.5: (quant_mode, module, input_args, input_kwargs, state_dict_file, output_dir, bitwidth)
    q35 = torch_quantizer("calib", model, (data[:4],), None, str(tmp_path / "w.pth"), str(tmp_path / "b"), 4)
    assert q35.output_dir == tmp_path / "b" and (q35.bitwidth_w, q35.bitwidth_a) == (4, 4)
    assert (tmp_path / "a" / "DigitsNet.py").exists() and (tmp_path / "b" / "DigitsNet.py").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lstm": True}, r"lstm=True .* not supported yet"),
        ({"mix_bit": True}, r"mix_bit=True .* not supported yet"),
        ({"qat_proc": True}, r"qat_proc=True .* not supported yet"),
        ({"app_deploy": "NLP"}, r"app_deploy='NLP' .* not supported yet"),
        ({"app_deploy": "XYZ"}, r"app_deploy must be 'CV' or 'NLP'"),
        ({"custom_quant_ops": ["NoSuchOp"]}, r"custom_quant_ops names \['NoSuchOp'\].*register_custom_op"),
        ({"input_kwargs": [1]}, r"input_kwargs must be a dict"),
    ],
)
def test_unsupported_options_are_clear_errors(tmp_path, kwargs, message):
    model, data = model_and_data()
    with pytest.raises(InputError, match=message):
        torch_quantizer("calib", model, (data[:4],), output_dir=tmp_path, **kwargs)


def test_module_list_and_data_parallel(tmp_path):
    model, data = model_and_data()
    with pytest.raises(InputError, match="list of modules"):
        torch_quantizer("calib", [model, model], (data[:4],), output_dir=tmp_path)
    q = torch_quantizer("float", nn.DataParallel(model), (data[:4],), output_dir=tmp_path, dynamo=True)
    with torch.no_grad():
        assert torch.allclose(q.quant_model(data[:4]), model(data[:4]), atol=1e-5)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, scale=None, bias=None):
        y = self.conv(x)
        if bias is not None:
            y = y + bias
        return y if scale is None else y * scale


def test_input_kwargs_are_bound_by_name(tmp_path):
    torch.manual_seed(0)
    model, x, b = TwoInputs().eval(), torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
    q = torch_quantizer("float", model, (x,), {"bias": b}, output_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(q.quant_model(x, None, b), model(x, bias=b), atol=1e-6)
        assert torch.allclose(q.quant_model(x, scale=None, bias=b), model(x, bias=b), atol=1e-6)
    with pytest.raises(InputError, match=r"\['shift'\] are not positional-or-keyword parameters"):
        torch_quantizer("float", model, (x,), {"shift": b}, output_dir=tmp_path)


def _accuracy(model, data):
    with torch.no_grad():
        return float(model(data).argmax(1).float().mean())


def test_quantize_test_deploy_in_one_process(tmp_path):
    model, data = model_and_data()
    q = torch_quantizer("calib", model, (data[:4],), output_dir=tmp_path)
    with pytest.raises(NndctError, match="needs the calibrated model"):
        q.export_onnx_model()
    path = q.quantize(lambda m, d: [m(b) for b in d.split(16)], (q.quant_model, data))
    assert path == tmp_path / "quant_info.json" and path.exists()
    result = q.test(_accuracy, (q.quant_model, data))
    fresh = torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)
    assert result == _accuracy(fresh.quant_model, data)  # switched to test mode on the calibrated file
    assert q.deploy(_accuracy, (q.quant_model, data[:1]), fmt="onnx") == tmp_path / "DigitsNet_int.onnx"
    assert q.deploy(_accuracy, (q.quant_model, data[:1])).name == "DigitsNet_int.xmodel"
    assert q.deploy(_accuracy, (q.quant_model, data[:1]), fmt="torch_script").name == "DigitsNet_int.pt"
    with pytest.raises(InputError, match="fmt must be one of xmodel, onnx, torch_script"):
        q.deploy(_accuracy, (q.quant_model, data), fmt="tflite")
    with pytest.raises(NndctError, match="needs calib mode"):
        fresh.quantize(_accuracy, (fresh.quant_model, data))


_LOAD_AND_RUN = """
import sys, torch
module = torch.jit.load(sys.argv[1])
torch.save(module(torch.load(sys.argv[2])), sys.argv[3])
"""


def test_torch_script_runs_in_a_fresh_process_bit_exact(tmp_path):
    model, data = model_and_data()
    _calibrate(model, data, tmp_path)
    test = torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)
    with torch.no_grad():
        test.quant_model(data[:2])  # traced at batch 2, run at batch 5 below
        expected = test.quant_model(data[:5])
    scripted = test.export_torch_script(verbose=True)
    assert isinstance(scripted, torch.jit.ScriptModule)
    torch.save(data[:5], tmp_path / "x.pt")
    env_free = [sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path / "DigitsNet_int.pt"), str(tmp_path / "x.pt"),
                str(tmp_path / "y.pt")]  # fmt: skip
    subprocess.run(env_free, check=True, timeout=300, cwd=tmp_path)  # no import of pytorch_nndct there
    got = torch.load(tmp_path / "y.pt")
    assert torch.equal(got, expected)
    with torch.no_grad():
        assert not torch.equal(got, model(data[:5]))  # it is the quantized model


def test_export_options_and_defaults(tmp_path, caplog):
    model, data = model_and_data()
    _calibrate(model, data, tmp_path)
    test = torch_quantizer("test", model, (data[:4],), output_dir=tmp_path)
    with pytest.raises(NndctError, match=r"dump_layers or check_model\) needs data from a forward pass"):
        test.export_onnx_model(dump_layers=True)
    with pytest.raises(NndctError, match=r"deploy_check=True\) needs data from a forward pass"):
        test.export_xmodel(deploy_check=True)
    with torch.no_grad():
        expected = test.quant_model(data[:3])
    with caplog.at_level(logging.INFO, logger="pytorch_nndct"):
        path = test.export_onnx_model(verbose=True, dynamic_batch=True, native_onnx=False, dump_layers=True,
                                      check_model=True)  # fmt: skip
    assert path == tmp_path / "DigitsNet_int.onnx"  # the constructor's output_dir by default
    assert "check_model: onnxruntime vs simulation" in caplog.text and "ONNX graph" in caplog.text
    layers = sorted((tmp_path / "onnx_layer_output").glob("*.bin"))
    assert len(layers) > 10
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the dump's layers as written
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: data[:3].numpy()})
    out_bin = np.fromfile(tmp_path / "onnx_layer_output" / "output_0.bin", dtype=np.float32)
    assert np.array_equal(out_bin, got.reshape(-1))
    assert np.abs(got - expected.numpy()).max() <= 2 * 2.0**-2  # DPU-rounded model in onnxruntime: a few LSB
    xmodel = test.export_xmodel(tmp_path / "x", deploy_check=True, dynamic_batch=True)
    g = schema().Graph.FromString(xmodel.read_bytes())
    assert g.graph_name == "DigitsNet" and any(op.op_type == "conv2d" for op in g.op_node)
    assert (tmp_path / "x" / "deploy_check_data_int" / "DigitsNet").is_dir()
    simplified = test.export_onnx_model(tmp_path / "sim", opt_graph=True)
    sess = ort.InferenceSession(str(simplified), opts, providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {sess.get_inputs()[0].name: data[:3].numpy()})[0], got)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        assert test.deploy_model is None
        test.export_traced_torch_script(tmp_path / "ts")
    assert "only quantization-aware training has a deployable model" in caplog.text
    assert "deprecated" in caplog.text and (tmp_path / "ts" / "DigitsNet_int.pt").exists()
    load_vai_ops()  # nothing to register: our ONNX is standard Q/DQ
    import onnx

    opsets = [onnx.load(test.export_onnx_model(tmp_path / f"o{v}", opset_version=v)).opset_import[0].version
              for v in (13, -1)]  # fmt: skip
    assert opsets == [13, 17]  # -1: the original's "latest stable", our default


class LeakyBetween(nn.Module):
    def __init__(self, slope: float):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_target_keeps_what_the_dpu_cannot_run_in_float(tmp_path, caplog):
    from wire import read_graph, read_root

    torch.manual_seed(0)
    model, data = LeakyBetween(0.2).eval(), torch.randn(8, 3, 8, 8)
    _calibrate(model, data, tmp_path, target="DPUCZDX8G_ISA1_B4096")
    test = torch_quantizer("test", model, (data[:2],), output_dir=tmp_path, target="0x0101000056010407")
    (leaky,) = [n for n in test.graph.nodes if n.op.value == "leaky_relu"]
    assert "Its alpa is 0.2, but DPU only support 0.1015625." in test.plan.float_ops[leaky.name]
    conv_a = test.graph.nodes[1]
    assert conv_a.name in test.plan.outputs  # the conv's output is quantized where the float op reads it
    with torch.no_grad():
        a = test.quant_model.module_1(data)  # the conv with its point; the float LeakyReLU keeps slope 0.2
        neg = a < -0.5
        slope = (test.quant_model.module_2(a, negative_slope=0.2)[neg] / a[neg]).mean()  # quantized for conv b
    assert abs(float(slope) - 0.2) < 0.02
    report = test.partition_report()
    assert "CPU" in report and "alpa" in report
    buf = test.export_xmodel().read_bytes()
    devices = {c.attrs["device"] for c in read_root(buf).children}
    assert devices == {"USER", "DPU", "CPU"}
    assert any(op.type == "leaky-relu" for op in read_graph(buf)[1])
    plain = torch_quantizer("calib", model, (data[:2],), output_dir=tmp_path / "p")
    assert leaky.name not in plain.plan.float_ops  # without a target everything is quantized (slope 26/256)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        cfg = tmp_path / "cfg.json"
        cfg.write_text('{"target_device": "DPU"}')
        q = torch_quantizer("calib", model, (data[:2],), output_dir=tmp_path / "c", quant_config_file=cfg,
                            target="DPUCZDX8G_ISA1_B4096")  # fmt: skip
    assert q.target is None and "turned off by quant_config_file" in caplog.text
    with pytest.raises(InputError, match=r"DPUCZDX8G_ISA1_B4096"):
        torch_quantizer("calib", model, (data[:2],), output_dir=tmp_path, target="DPUCZDX8G_ISA1_B4069")


def test_torch_script_of_global_pooling_and_other_batches(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    data = torch.randn(8, 3, 12, 12)
    _calibrate(model, data, tmp_path)
    test = torch_quantizer("test", model, (data[:2],), output_dir=tmp_path)
    scripted = test.export_torch_script()  # traced on the example inputs: no forward needed
    with torch.no_grad():
        assert torch.equal(scripted(data[:3]), test.quant_model(data[:3]))

"""Inspector (VAIQ35 2): four torchvision models and small models on four targets, the report, the screen tables,
the drawing (opened in headless Chromium) and clear errors.

Expected assignments are derived by hand from the target table (dpu_targets.json); comments name the fields.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import subprocess

import pytest
import torch
import torchvision

from pytorch_nndct.errors import InputError
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.targets import Inspector, UnknownTargetError, assign_devices
from target_models import EltwiseMul

B4096, AHX8H, C32B3, C20B14 = "DPUCZDX8G_ISA1_B4096", "DPUCAHX8H_ISA2", "DPUCVDX8G_ISA3_C32B3", "DPUCV2DX8G_ISA1_C20B14"
TARGETS = (B4096, AHX8H, C32B3, C20B14)
# the nonlinear types of all engines of a target, as the reason for sigmoid / silu lists them
NONLINEAR = {B4096: "leaky_relu, relu, relu_six", AHX8H: "leaky_relu, relu, relu_six",
             C32B3: "hsigmoid, hswish, leaky_relu, relu, relu_six",
             C20B14: "hsigmoid, hswish, leaky_relu, relu, relu_six"}  # fmt: skip
MODELS = {"resnet18": 64, "mobilenet_v2": 64, "efficientnet_b0": 64, "inception_v3": 75}  # smallest valid sizes


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """Each model inspected once for DPUCZDX8G_ISA1_B4096 (one trace, one forward); the graphs serve all targets."""
    out = {}
    for name, size in MODELS.items():
        torch.manual_seed(0)
        kwargs = {"init_weights": False, "aux_logits": False} if name == "inception_v3" else {}
        model = torchvision.models.get_model(name, **kwargs).eval()
        folder = tmp_path_factory.mktemp(name)
        out[name] = (Inspector(B4096).inspect(model, torch.randn(1, 3, size, size), output_dir=folder,
                                              verbose_level=0), folder)  # fmt: skip
    return out


def _is_depthwise(graph, node):
    return node.op is Op.CONV2D and node.attrs["groups"] > 1 and node.attrs["groups"] == node.meta.shape[1]


def _expected_cpu(graph, model, target):
    """node -> reasons of the nodes `target` leaves to the CPU, from the table's numbers."""
    cpu = {}
    for node in graph.nodes:
        if node.op in (Op.SILU, Op.SIGMOID):  # no engine lists silu / sigmoid as a nonlinear type
            cpu[node.name] = (f"{node.op.value} can't be assigned to DPU: it is not a nonlinear type of {target} "
                              f"({NONLINEAR[target]}).",)  # fmt: skip
        if target != AHX8H:
            continue
        # DPUCAHX8H_ISA2: no dwconv engine and no alu engine; eltwise_engine.elew_type = [add]; pool 1-8
        if _is_depthwise(graph, node):
            cpu[node.name] = (f"{target} does not have depthwise-conv-engine. This is a depthwise convolution "
                              f"(groups = channels = {node.attrs['groups']}).",)  # fmt: skip
        elif node.op is Op.MUL:
            cpu[node.name] = (f"{target} does not support eltwise MUL (it supports add).",)
        elif node.op is Op.ADAPTIVE_AVG_POOL2D and node.inputs[0].meta.shape[2] > 8:  # avg_limit.kernel_size 1-8
            k = node.inputs[0].meta.shape[2]
            cpu[node.name] = (f"'kernel'({k} x {k}) is not in DPU supported range(1-8).",)
        elif node.op is Op.RELU6 and _is_depthwise(graph, node.inputs[0]):  # nothing to fuse into
            src = node.inputs[0].name
            cpu[node.name] = (f"relu6 can't be fused into its producer {src}, which is not on DPU.",
                              "relu6 can't be assigned to DPU alone.")  # fmt: skip
    return cpu


# DPU / CPU counts derived by hand (also checked node by node below):
# resnet18, inception_v3: every conv kernel (1-7) in 1-16, strides 1-2, at most 2048 input channels (<= 256 * ICP),
#   weights fit every CONVW bank, pools 3x3 fit alu 1-256 and pool 1-8, add + relu on eltwise (or alu elew_add).
# mobilenet_v2: 17 depthwise convs run on the alu (dwconv / macc_temp) except on DPUCAHX8H_ISA2.
# efficientnet_b0: 49 SiLU + 16 sigmoid on the CPU everywhere; on DPUCAHX8H_ISA2 also 16 depthwise convs,
#   16 multiplies and 3 squeeze-excitation pools over 32x32 and 16x16 maps.
COUNTS = {
    "resnet18": {t: (49, 0) for t in TARGETS},
    "mobilenet_v2": {B4096: (100, 0), AHX8H: (66, 34), C32B3: (100, 0), C20B14: (100, 0)},
    "efficientnet_b0": {B4096: (125, 65), AHX8H: (90, 100), C32B3: (125, 65), C20B14: (125, 65)},
    "inception_v3": {t: (219, 0) for t in TARGETS},
}


@pytest.mark.parametrize("model", list(MODELS))
def test_torchvision_models_on_four_targets(inspected, model):
    result, folder = inspected[model]
    graph = result.graph
    assert (folder / f"inspect_{B4096}.txt").is_file() and (folder / f"{graph.name}.py").is_file()
    for target in TARGETS:
        assignments = result.assignments if target == B4096 else assign_devices(graph, target)
        cpu = {n: a.reasons for n, a in assignments.items() if a.device == "CPU"}
        assert cpu == _expected_cpu(graph, model, target), (model, target)
        dpu = [n for n, a in assignments.items() if a.device == "DPU"]
        assert (len(dpu), len(cpu)) == COUNTS[model][target], (model, target)
        assert [n for n, a in assignments.items() if a.device == "USER"] == ["input_0"]


def _inspect_mul(tmp_path, target, **kwargs):
    torch.manual_seed(0)
    return Inspector(target).inspect(EltwiseMul().eval(), torch.randn(1, 3, 8, 8), output_dir=tmp_path, **kwargs)


def test_report_sections_and_fields(tmp_path):
    result = _inspect_mul(tmp_path, AHX8H, verbose_level=0)
    text = (tmp_path / f"inspect_{AHX8H}.txt").read_text()
    assert text.startswith("# inspect_<target>.txt") and result.on("CPU") == ["mul_3", "relu_4"]
    order = ["target info:", AHX8H, "fingerprint: 0x020200000010002a", "inspection summary:",
             "The operators assigned to the CPU are as follows:", "node name  op type  hardware constraints",
             "graph name: EltwiseMul",
             "node name: input_0", "node name: conv2d_1", "node name: mul_3", "node name: relu_4"]  # fmt: skip
    positions = [text.index(f"\n{line}") for line in order]
    assert positions == sorted(positions)
    mul = text.split("node name: mul_3\n")[1].split("=" * 160)[0].splitlines()
    assert mul == ["input nodes: ['conv2d_1', 'conv2d_2']", "output nodes: ['relu_4']", "op type: mul",
                   "outputs shape: [1, 8, 8, 8]", "op attributes:", "  other: None", "assigned device: cpu",
                   "hardware constraints: DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add).",
                   "source range:", f"{mul[-1]}"]  # fmt: skip
    lines, first = inspect.getsourcelines(EltwiseMul.forward)
    assert mul[-1].endswith(f"target_models.py:{first + len(lines) - 1}")  # the multiply, in the forward's last line
    conv = text.split("node name: conv2d_1\n")[1].split("=" * 160)[0]
    assert "  weight: [8, 3, 3, 3] (a.weight)\n" in conv and "assigned device: dpu\nnode messages:\n" in conv
    assert "runs on the conv-engine." in conv and "assigned device: user" in text.split("node name: conv2d_1")[0]
    _inspect_mul(tmp_path, B4096, verbose_level=0)
    assert "\nAll the operators are assigned to the DPU.\n" in (tmp_path / f"inspect_{B4096}.txt").read_text()


def test_screen_tables_per_verbose_level(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pytorch_nndct")
    _inspect_mul(tmp_path, AHX8H, verbose_level=0)
    assert capsys.readouterr().out == ""
    _inspect_mul(tmp_path, AHX8H, verbose_level=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["node", "name", "op", "type", "hardware", "constraints"] and len(lines) == 4
    assert lines[2].split(maxsplit=2) == [
        "mul_3",
        "mul",
        "DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add).",
    ]
    assert f"The operators assigned to the CPU are as follows(see more details in '{tmp_path}" in caplog.text
    _inspect_mul(tmp_path, AHX8H, verbose_level=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["node", "name", "op", "type", "assigned", "device"]
    assert [line.split() for line in lines[2:]] == [["conv2d_1", "conv2d", "dpu"], ["conv2d_2", "conv2d", "dpu"],
                                                    ["mul_3", "mul", "cpu"], ["relu_4", "relu", "cpu"]]  # fmt: skip
    _inspect_mul(tmp_path, B4096, verbose_level=1)
    assert capsys.readouterr().out == "" and "All the operators are assigned to the DPU(see more details" in caplog.text


def test_fingerprint_names_the_files(tmp_path):
    result = _inspect_mul(tmp_path, "0x020200000010002A", verbose_level=0)
    assert (tmp_path / "inspect_0x020200000010002A.txt").is_file() and result.on("CPU") == ["mul_3", "relu_4"]


def test_drawing_opens_in_headless_chromium(tmp_path):
    result = _inspect_mul(tmp_path, AHX8H, verbose_level=0, image_format="svg")
    svg, gv = tmp_path / f"inspect_{AHX8H}.svg", tmp_path / f"inspect_{AHX8H}.gv"
    assert {svg, gv} <= set(result.files)
    assert "mul_3 [label=" in gv.read_text() and "color=red" in gv.read_text()
    browser = shutil.which("chromium")
    assert browser, "the test command installs Debian's chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run([browser, *flags, "--dump-dom", svg.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<svg" in dom.stdout
    for name, colour in (("input_0", "black"), ("conv2d_1", "blue"), ("conv2d_2", "blue"), ("mul_3", "red"),
                         ("relu_4", "red")):  # fmt: skip
        node = dom.stdout.split(f"<title>{name}</title>")[1].split("</g>")[0]
        assert f'stroke="{colour}"' in node and f"name:{name}" in node
        assert f"assigned device:{result.assignments[name].device.value.lower()}" in node
    shot = tmp_path / "screen.png"
    subprocess.run([browser, *flags, "--window-size=800,1200", f"--screenshot={shot}", svg.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000  # the drawing was rendered, not a blank page
    png = _inspect_mul(tmp_path, AHX8H, verbose_level=0, image_format="png").files[-1]
    assert png.name == f"inspect_{AHX8H}.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clear_errors(tmp_path):
    with pytest.raises(UnknownTargetError, match="Did you mean 'DPUCZDX8G_ISA1_B4096'") as info:
        Inspector("DPUCZDX8G_ISA1_B4069")
    assert isinstance(info.value, InputError) and "list_targets()" in str(info.value)
    with pytest.raises(InputError, match="Only support dump svg or png format, got image_format='jpg'"):
        _inspect_mul(tmp_path, B4096, image_format="jpg")
    with pytest.raises(InputError, match="verbose_level must be 0, 1 or 2"):
        _inspect_mul(tmp_path, B4096, verbose_level=3)
    assert not list(tmp_path.iterdir())  # refused before anything was written

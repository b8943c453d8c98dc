"""Per-op rules on small models that each break one limit, for the four targets of issue 11 (done-when 3).

Every expected device and reason below is derived by hand from the target table (dpu_targets.json, VAIQ35 3.4);
the comment next to each names the fields used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_nndct.ir.batch import at_batch
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.ir.trace import trace
from pytorch_nndct.passes import optimize
from pytorch_nndct.targets import assign_devices, cpu_ops
from pytorch_nndct.targets.assign import NO_RULE
from pytorch_nndct.targets.rules import RULES
from pytorch_nndct.utils import register_custom_op
from target_models import limit_models

B4096, AHX8H, C32B3, C20B14 = "DPUCZDX8G_ISA1_B4096", "DPUCAHX8H_ISA2", "DPUCVDX8G_ISA3_C32B3", "DPUCV2DX8G_ISA1_C20B14"
TARGETS = (B4096, AHX8H, C32B3, C20B14)


def test_every_op_has_a_rule_or_a_reason_for_none():
    assert set(RULES) | set(NO_RULE) == set(Op) and not set(RULES) & set(NO_RULE)
    assert all(NO_RULE.values())


@pytest.fixture(scope="module")
def graphs():
    # shapes at the example's batch, as the Inspector reports them
    return {
        name: at_batch(optimize(trace(model.eval(), (x,))), x.shape[0]) for name, (model, x) in limit_models().items()
    }


def _devices(graph, target):
    """node -> (device, reasons) for every node but the network input, or the DPU engine on the DPU."""
    return {n: (a.device.value, a.reasons or a.engine) for n, a in assign_devices(graph, target).items()
            if a.device != "USER"}  # fmt: skip


def _weights_too_large(shape, depth, limit):
    return (f"Weights({shape}) is too large to be loaded into parameter buffer. 'kernel_h * kernel_w * "
            f"⌈input_channel / weights_bank_width⌉ * ⌈output_channel_parallel / weights_bank_num⌉({depth})' is "
            f"supposed to be less equal than {limit}.")  # fmt: skip


def _relu_not_fused(producer):
    return (
        f"relu can't be fused into its producer {producer}, which is not on DPU.",
        "relu can't be assigned to DPU alone.",
    )


DPU_CONV_RELU = {"conv2d_1": ("DPU", "conv"), "relu_2": ("DPU", "fused into conv2d_1")}
EXPECTED = {
    # weight bank depth = 9 * 9 * ceil(512 / CONVW.bank_width 16) * ceil(conv.output_channel_parallel / CONVW.bank_num)
    "conv9x9": {
        # CONVW 16 x 16 x 2048, OCP 16: 81 * 32 * 1 = 2592 > 2048
        B4096: {"conv2d_1": ("CPU", (_weights_too_large([16, 9, 9, 512], 2592, 2048),)),
                "relu_2": ("CPU", _relu_not_fused("conv2d_1"))},
        AHX8H: {"conv2d_1": ("CPU", (_weights_too_large([16, 9, 9, 512], 2592, 2048),)),
                "relu_2": ("CPU", _relu_not_fused("conv2d_1"))},
        C32B3: DPU_CONV_RELU,  # CONVW 16 x 16 x 8192, OCP 32: 81 * 32 * 2 = 5184 <= 8192; conv nonlinear has relu
        C20B14: DPU_CONV_RELU,  # CONVW 4 x 16 x 32768, OCP 32: 81 * 32 * 8 = 20736 <= 32768
    },
    "pool9x9": {  # max pool kernel 9: alu_limit.kernel_size 1-256 (B4096, C32B3; C20B14 comp_temp), pool max 1-8
        **{t: {**DPU_CONV_RELU, "max_pool2d_3": ("DPU", "alu")} for t in (B4096, C32B3, C20B14)},
        AHX8H: {**DPU_CONV_RELU, "max_pool2d_3": ("CPU", ("'kernel'(9 x 9) is not in DPU supported range(1-8).",))},
    },
    "conv17x17": {  # conv_limit.kernel_size is 1-16 on all four
        t: {"conv2d_1": ("CPU", ("'kernel'(17 x 17) is not in DPU supported range(1-16).",))} for t in TARGETS
    },
    "stride16": {  # conv_limit.stride: 1-8, 1-4, 1-8, 1-16
        B4096: {"conv2d_1": ("CPU", ("'stride'([16, 16]) is not in DPU supported range(1-8).",))},
        AHX8H: {"conv2d_1": ("CPU", ("'stride'([16, 16]) is not in DPU supported range(1-4).",))},
        C32B3: {"conv2d_1": ("CPU", ("'stride'([16, 16]) is not in DPU supported range(1-8).",))},
        C20B14: {"conv2d_1": ("DPU", "conv")},
    },
    "leaky_0.2": {  # the DPU's leaky-relu slope is 26/256 = 0.1015625 whatever the target
        t: {"conv2d_1": ("DPU", "conv"),
            "leaky_relu_2": ("CPU", ("Its alpa is 0.2, but DPU only support 0.1015625.",))} for t in TARGETS
    },
    "leaky_26/256": {  # conv_engine.nonlinear lists leaky_relu on all four
        t: {"conv2d_1": ("DPU", "conv"), "leaky_relu_2": ("DPU", "fused into conv2d_1")} for t in TARGETS
    },
    "hardswish": {
        # B4096: conv nonlinear relu, leaky_relu, relu_six; alu_type hsigmoid + eltwise mult: a single hard-swish
        B4096: {"conv2d_1": ("DPU", "conv"), "hardswish_2": ("DPU", "alu")},
        AHX8H: {"conv2d_1": ("DPU", "conv"), "hardswish_2": ("CPU", (  # no hswish in conv nonlinear, no alu-engine
            "hardswish can't be fused into its producer conv2d_1: hswish is not a nonlinear type of the conv-engine "
            "(relu, leaky_relu, relu_six).", "DPUCAHX8H_ISA2 has no alu-engine to compute a single hswish."))},
        C32B3: {"conv2d_1": ("DPU", "conv"), "hardswish_2": ("DPU", "fused into conv2d_1")},  # conv nonlinear hswish
        C20B14: {"conv2d_1": ("DPU", "conv"), "hardswish_2": ("DPU", "fused into conv2d_1")},
    },
    "mul": {  # eltwise_engine.elew_type: add, mult / add / add, mult / none (alu_type elew_mult); nonlinear relu
        B4096: {"conv2d_1": ("DPU", "conv"), "conv2d_2": ("DPU", "conv"), "mul_3": ("DPU", "eltwise"),
                "relu_4": ("DPU", "fused into mul_3")},
        AHX8H: {"conv2d_1": ("DPU", "conv"), "conv2d_2": ("DPU", "conv"),
                "mul_3": ("CPU", ("DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add).",)),
                "relu_4": ("CPU", _relu_not_fused("mul_3"))},
        C32B3: {"conv2d_1": ("DPU", "conv"), "conv2d_2": ("DPU", "conv"), "mul_3": ("DPU", "eltwise"),
                "relu_4": ("DPU", "fused into mul_3")},
        C20B14: {"conv2d_1": ("DPU", "conv"), "conv2d_2": ("DPU", "conv"), "mul_3": ("DPU", "alu"),
                 "relu_4": ("DPU", "fused into mul_3")},
    },
    "reshape5d": {  # feature maps are at most 4-D on every target (node 1 reads the batch size)
        t: {"conv2d_2": ("DPU", "conv"),
            "reshape_3": ("CPU", ("DPU supports tensors of up to 4 dimensions, but the output of reshape is 5-D "
                                  "[1, 2, 4, 8, 8].",)),
            "transpose_4": ("CPU", ("DPU supports tensors of up to 4 dimensions, but the output of transpose is 5-D "
                                    "[1, 4, 2, 8, 8].",)),
            "reshape_5": ("CPU", ("The input of reshape is not on DPU.",)),
            "conv2d_6": ("DPU", "conv")} for t in TARGETS
    },
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXPECTED))
def test_one_limit_per_model(graphs, case):
    for target in TARGETS:
        assert _devices(graphs[case], target) == EXPECTED[case][target], (case, target)


def test_cpu_ops_are_what_stays_float(graphs):
    assert cpu_ops(graphs["mul"], AHX8H) == {
        "mul_3": "DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add).",
        "relu_4": " ".join(_relu_not_fused("mul_3")),
    }
    assert cpu_ops(graphs["mul"], B4096) == {}


class _CatOfCpu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([torch.sigmoid(x), torch.tanh(x)], 1))


class _FirstDim(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x).reshape(8, -1), dim=1)


class _Resize(nn.Module):
    def __init__(self, mode: str, align: bool | None) -> None:
        super().__init__()
        self.conv, self.mode, self.align = nn.Conv2d(3, 8, 3, padding=1), mode, align

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode=self.mode, align_corners=self.align)


class _Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 8, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class _WidePadDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=16, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.conv(x))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 8, 1), nn.Parameter(torch.rand(1, 8, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


CONV = ("DPU", "conv")
NOT_NONLINEAR = "{op} can't be assigned to DPU: it is not a nonlinear type of {t} (leaky_relu, relu, relu_six)."
OTHERS = {
    "cat": (_CatOfCpu, {  # sigmoid, tanh: no engine; a concat of CPU inputs goes to the CPU (the allocator's rule)
        t: {"sigmoid_1": ("CPU", (NOT_NONLINEAR.format(op="sigmoid", t=t),)),
            "tanh_2": ("CPU", (NOT_NONLINEAR.format(op="tanh", t=t),)),
            "cat_3": ("CPU", ("All input of concat are on CPU.",)), "conv2d_4": CONV} for t in (B4096, AHX8H)}),
    "first_dim": (_FirstDim, {  # the reshape feeds the CPU and changes dim 0 from 1 to 8
        t: {"conv2d_1": CONV, "reshape_2": ("CPU", ("First dimension is changed.",)),
            "softmax_3": ("CPU", (f"softmax can't be assigned to DPU: {t} has no engine that computes softmax.",))}
        for t in (B4096, AHX8H)}),
    "bilinear": (lambda: _Resize("bilinear", False), {  # x2 bilinear = transposed depthwise conv: needs an ALU / dwconv
        B4096: {"conv2d_1": CONV, "interpolate_2": ("DPU", "alu")},
        AHX8H: {"conv2d_1": CONV, "interpolate_2": ("CPU", ("Try to convert bilinear upsample to transposed "
                "depthwise conv2d failed. DPUCAHX8H_ISA2 does not have depthwise-conv-engine.",))}}),
    "align_corners": (lambda: _Resize("bilinear", True), {
        t: {"conv2d_1": CONV, "interpolate_2": ("CPU", ("DPU does not support align_corners = True",))}
        for t in (B4096, AHX8H)}),
    "nearest": (lambda: _Resize("nearest", None), {
        t: {"conv2d_1": CONV, "interpolate_2": ("DPU", "load")} for t in (B4096, AHX8H)}),
    "deconv": (_Deconv, {t: {"conv_transpose2d_1": ("CPU", ("DPU does not support output_padding.",
                                                            "conv_transpose2d can't be converted to XIR."))}
                         for t in (B4096, AHX8H)}),
    "depthwise_pad": (_WidePadDepthwise, {  # alu pad_limit.pad_left 0-15; DPUCAHX8H_ISA2 has no dwconv nor alu engine
        B4096: {"conv2d_1": CONV, "conv2d_2": ("CPU", ("'pad_left'(16) is not in DPU supported range(0-15).",))},
        AHX8H: {"conv2d_1": CONV, "conv2d_2": ("CPU", ("DPUCAHX8H_ISA2 does not have depthwise-conv-engine. This is a "
                                                       "depthwise convolution (groups = channels = 8).",))}}),
    "constant": (_Scaled, {  # a constant follows its reader
        B4096: {"const_1": ("DPU", "load"), "conv2d_2": CONV, "mul_3": ("DPU", "eltwise")},
        AHX8H: {"const_1": ("CPU", ("All the children nodes are assigned to CPU.",)), "conv2d_2": CONV,
                "mul_3": ("CPU", ("DPUCAHX8H_ISA2 does not support eltwise MUL (it supports add).",))}}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OTHERS))
def test_layout_resize_and_constant_rules(case):
    make, expected = OTHERS[case]
    torch.manual_seed(0)
    graph = optimize(trace(make().eval(), (torch.randn(1, 3, 4, 4),)))
    for target, devices in expected.items():
        assert _devices(graph, target) == devices, (case, target)


@register_custom_op("TargetsTestScale", attrs_list=["alpha"])
def _targets_test_scale(ctx, x, alpha):
    return x * alpha


class _WithCustom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _targets_test_scale(self.conv(x), 0.5)


def test_a_custom_op_runs_on_the_cpu():
    graph = optimize(trace(_WithCustom().eval(), (torch.randn(1, 3, 4, 4),)))
    (custom,) = graph.find(Op.CUSTOM)
    why = "TargetsTestScale can't be assigned to DPU: a custom op runs on the CPU with your implementation."
    assert _devices(graph, B4096) == {"conv2d_1": CONV, custom.name: ("CPU", (why,))}

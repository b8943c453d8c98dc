"""The DPU target table: every registered target of Vitis AI 3.5, looked up by name or fingerprint (VAIQ35 3)."""

from __future__ import annotations

import dataclasses

import pytest

from pytorch_nndct.errors import InputError
from pytorch_nndct.targets import UnknownTargetError, all_targets, decode_dpuczdx8g_isa1, get_target, list_targets
from pytorch_nndct.targets.table import Range

# VAIQ35 3.2: the registered names with their 64-bit fingerprints
FINGERPRINTS = {
    "DPUCZDX8G_ISA1_B512": 0x0101000056010200,
    "DPUCZDX8G_ISA1_B800": 0x0101000056010201,
    "DPUCZDX8G_ISA1_B1024": 0x0101000056010402,
    "DPUCZDX8G_ISA1_B1152": 0x0101000056010203,
    "DPUCZDX8G_ISA1_B1600": 0x0101000056010404,
    "DPUCZDX8G_ISA1_B2304": 0x0101000056010405,
    "DPUCZDX8G_ISA1_B3136": 0x0101000056010406,
    "DPUCZDX8G_ISA1_B4096": 0x0101000056010407,
    "DPUCAHX8H_ISA2": 0x020200000010002A,
    "DPUCAHX8H_ISA2_DWC": 0x020200000010002B,
    "DPUCAHX8H_ISA2_ELP2": 0x020200000000002E,
    "DPUCAHX8L_ISA0": 0x030000000000001D,
    "DPUCAHX8L_ISA0_SP": 0x030000000000101D,
    "DPUCZDI4G_ISA0_B4096_DEMO_SSD": 0x0400002003220206,
    "DPUCZDI4G_ISA0_B8192D8_DEMO_SSD": 0x0400002003220207,
    "DPUCVDX8H_ISA1_F2W2_8PE": 0x0501000000140FEE,
    "DPUCVDX8H_ISA1_F2W4_4PE": 0x05010000001E082F,
    "DPUCVDX8H_ISA1_F2W4_6PE_aieDWC": 0x0501000000160C2F,
    "DPUCVDX8H_ISA1_F2W4_6PE_aieMISC": 0x05010000001E082E,
    "DPUCVDX8G_ISA3_C32B1": 0x0603000B56011811,
    "DPUCVDX8G_ISA3_C32B3": 0x0603000B56011831,
    "DPUCVDX8G_ISA3_C32B3_PSMNET": 0x0603000B16026831,
    "DPUCVDX8G_ISA3_C32B6": 0x0603000B56011861,
    "DPUCVDX8G_ISA3_C64B1": 0x0603000B56011812,
    "DPUCVDX8G_ISA3_C64B3": 0x0603000B56011832,
    "DPUCVDX8G_ISA3_C64B5": 0x0603000B56011852,
    "DPUCADF8H_ISA0": 0x0700000000000000,
    "DPUCV2DX8G_ISA1_C20B1": 0x0901400044000144,
    "DPUCV2DX8G_ISA1_C20B14": 0x0901400044000E44,
}
IPU = ("AMD_AIE2_1x4_Overlay", "AMD_AIE2_4x5_Overlay", "AMD_AIE2_5x4_Overlay", "AMD_AIE2_Nx4_Overlay",
       "V70_2x3_Overlay")  # fmt: skip


def test_every_registered_target_with_its_fingerprint():
    assert len(all_targets()) == 34 and set(list_targets()) == set(FINGERPRINTS) | set(IPU)
    for name, fingerprint in FINGERPRINTS.items():
        t = get_target(name)
        assert t.fingerprint == fingerprint and t.fingerprint_hex == f"0x{fingerprint:016x}"
        assert get_target(f"0x{fingerprint:016x}") is t and get_target(f"0X{fingerprint:016X}") is t
        assert not t.needs_ipu_build and t.conv is not None
    assert all(get_target(n).type == "IPU_PHX" for n in IPU)
    assert [n for n in IPU if get_target(n).needs_ipu_build] == list(IPU[:4])  # V70 is built without ENABLE_IPU


def test_capabilities_of_the_four_test_targets():
    """VAIQ35 3.4, read from the target files."""
    names = ("DPUCZDX8G_ISA1_B4096", "DPUCAHX8H_ISA2", "DPUCVDX8G_ISA3_C32B3", "DPUCV2DX8G_ISA1_C20B14")
    b4096, ahx8h, c32b3, c20b14 = (get_target(n) for n in names)
    cps = [(t.conv.input_channel_parallel, t.conv.output_channel_parallel, t.conv.pixel_parallel)
           for t in (b4096, ahx8h, c32b3, c20b14)]  # fmt: skip
    assert cps == [(16, 16, 8), (16, 16, 8), (16, 32, 8), (32, 32, 4)]
    assert [str(t.conv.stride) for t in (b4096, ahx8h, c32b3, c20b14)] == ["1-8", "1-4", "1-8", "1-16"]
    assert b4096.conv.nonlinear == ("relu", "leaky_relu", "relu_six") and "hswish" in c32b3.conv.nonlinear
    assert b4096.eltwise.elew_type == ("add", "mult") and ahx8h.eltwise.elew_type == ("add",)
    assert c20b14.eltwise is None and c20b14.alu.alu_type == ("macc_temp", "comp_temp", "elew_add", "elew_mult")
    assert b4096.pool is None and str(ahx8h.pool.max_limit.kernel_size) == "1-8" and ahx8h.alu is None
    assert ahx8h.dwconv is None and get_target("DPUCAHX8H_ISA2_DWC").dwconv.kernel_size.values == {1, 2, 3, 5, 7}
    assert [t.batch for t in (b4096, ahx8h, c32b3, c20b14)] == [None, None, 3, 14]
    assert b4096.bank("CONVW").bank_depth == 2048 and c32b3.bank("CONVW").bank_depth == 8192
    assert (c20b14.bank("CONVW").bank_num, c20b14.bank("CONVW").bank_depth) == (4, 32768)
    assert str(b4096.alu.pad_left) == "0-15" and str(b4096.alu.pad_bottom) == "0-255"


def test_ranges_as_the_files_write_them():
    assert Range.parse("1-3,7").values == {1, 2, 3, 7} and 7 in Range.parse("1-3,7") and 4 not in Range.parse("1-3,7")
    assert Range.parse("3,5").values == {3, 5} and str(Range.parse("2,3,5,6,7,8")) == "2,3,5,6,7,8"


def test_dpuczdx8g_isa1_fingerprints_decode_to_the_registered_descriptions():
    for t in all_targets():
        if t.type == "DPUCZDX8G":
            decoded = decode_dpuczdx8g_isa1(t.fingerprint)
            assert decoded.name == f"{t.name}_{t.fingerprint:016X}"
            assert dataclasses.replace(decoded, name=t.name) == t
    custom = get_target("0x0101000076010407")  # B4096 with ALU leaky-relu (bit 29)
    assert custom.name == "DPUCZDX8G_ISA1_B4096_0101000076010407" and "leaky_relu" in custom.alu.nonlinear
    small = get_target("0x0101000056000309")  # ARCH 9: PP 2, ICP = OCP 6, 2 image bank groups
    assert small.name.startswith("DPUCZDX8G_ISA1_B144_") and small.conv.input_channel_parallel == 6
    assert str(small.conv.stride_out_h) == "1-4" and len([b for b in small.banks if b.type == "Virtual"]) == 2
    with pytest.raises(UnknownTargetError, match="ARCH field 12"):
        get_target("0x010100005601040c")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("DPUCZDX8G_ISA1_B4069", "Did you mean 'DPUCZDX8G_ISA1_B4096'"),
        ("dpucahx8h_isa2", "Did you mean 'DPUCAHX8H_ISA2'"),
        ("0x06030000000000zz", "not a hexadecimal fingerprint"),
        ("0x0603000b56011899", "only DPUCZDX8G ISA1 fingerprints"),
    ],
)
def test_unknown_targets_are_clear_errors(given, message):
    with pytest.raises(UnknownTargetError, match=message) as info:
        get_target(given)
    assert isinstance(info.value, InputError)
    assert "list_targets()" in str(info.value) or "hexadecimal" in str(info.value)
    with pytest.raises(InputError, match="a DPU target is a name"):
        get_target(4096)

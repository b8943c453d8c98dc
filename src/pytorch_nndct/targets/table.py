"""The DPU target table: one frozen `Target` per registered name and fingerprint (VAIQ35 3).

The data lives in `dpu_targets.json` next to this file, our own layout of the facts in Vitis AI 3.5's target
descriptions: per target its engines (conv, eltwise, pool, depthwise conv, ALU, load, save), their parallelism,
kernel / stride / pad ranges and fused nonlinear types, its memory banks and its batch. A fingerprint is
`type code << 56 | isa_version << 48 | feature_code`. Targets of the DPUCZDX8G ISA1 family that are not registered
by name can still be built from their fingerprint (`decode_dpuczdx8g_isa1`), as the original's generator does.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "AluEngine",
    "BankGroup",
    "ConvEngine",
    "DwconvEngine",
    "EltwiseEngine",
    "PoolEngine",
    "PoolLimit",
    "Range",
    "Target",
    "UnknownTargetError",
    "all_targets",
    "decode_dpuczdx8g_isa1",
    "get_target",
    "list_targets",
]

_DATA = Path(__file__).with_name("dpu_targets.json")


class UnknownTargetError(InputError):
    """A target name or fingerprint that is neither registered nor decodable."""


@dataclass(frozen=True)
class Range:
    """A set of allowed integers written as the target files do: '1-16' (inclusive), '3,5', '1-3,7'."""

    text: str
    values: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Range:
        values: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                values.update(range(int(lo), int(hi) + 1))
            else:
                values.add(int(part))
        return cls(text, frozenset(values))

    def __contains__(self, value: object) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return self.text


def _range(text: str | None) -> Range | None:
    return None if text is None else Range.parse(text)


@dataclass(frozen=True)
class BankGroup:
    name: str
    type: str  # "Virtual" (feature maps) or "Param" (weights, biases)
    bank_num: int
    bank_width: int
    bank_depth: int


@dataclass(frozen=True)
class ConvEngine:
    input_channel_parallel: int
    output_channel_parallel: int
    pixel_parallel: int
    weight_bank: str
    bias_bank: str
    channel_augmentation: int | None
    nonlinear: tuple[str, ...]
    kernel_size: Range
    stride: Range
    stride_out_h: Range | None


@dataclass(frozen=True)
class EltwiseEngine:
    channel_parallel: int
    pixel_parallel: int
    elew_type: tuple[str, ...]  # add, mult, sub, ...
    nonlinear: tuple[str, ...]


@dataclass(frozen=True)
class PoolLimit:
    kernel_size: Range
    stride: Range


@dataclass(frozen=True)
class PoolEngine:
    channel_parallel: int
    pixel_parallel: int
    pool_type: tuple[str, ...]  # max, avg, max_reduce
    nonlinear: tuple[str, ...]
    avg_limit: PoolLimit | None
    max_limit: PoolLimit | None


@dataclass(frozen=True)
class DwconvEngine:
    channel_parallel: int
    pixel_parallel: int
    weight_bank: str
    bias_bank: str
    nonlinear: tuple[str, ...]
    kernel_size: Range | None
    stride: Range | None


@dataclass(frozen=True)
class AluEngine:
    channel_parallel: int
    pixel_parallel: int
    weight_bank: str
    bias_bank: str
    alu_type: tuple[str, ...]  # dwconv, avg_pool, max_pool, ..., macc_temp, comp_temp, elew_add, elew_mult
    nonlinear: tuple[str, ...]
    kernel_size: Range | None
    stride: Range | None
    stride_out_h: Range | None
    pad_left: Range | None
    pad_right: Range | None
    pad_top: Range | None
    pad_bottom: Range | None


@dataclass(frozen=True)
class Target:
    """One DPU configuration. Absent engines are None; `batch` is None where the file does not set it."""

    name: str
    type: str
    isa_version: int
    feature_code: int
    fingerprint: int
    needs_ipu_build: bool
    batch: int | None
    banks: tuple[BankGroup, ...]
    load_channel_parallel: int | None
    save_channel_parallel: int | None
    save_argmax: bool
    conv: ConvEngine | None
    eltwise: EltwiseEngine | None
    pool: PoolEngine | None
    dwconv: DwconvEngine | None
    alu: AluEngine | None
    move: bool

    @property
    def fingerprint_hex(self) -> str:
        return f"0x{self.fingerprint:016x}"

    def bank(self, name: str) -> BankGroup | None:
        return next((b for b in self.banks if b.name == name), None)

    def describe(self) -> str:
        """A few lines on the target's engines, for reports."""
        lines = [f"name: {self.name}", f"type: {self.type}", f"isa version: {self.isa_version}",
                 f"fingerprint: {self.fingerprint_hex}", f"batch: {self.batch or 1}"]  # fmt: skip
        if self.conv:
            c = self.conv
            lines.append(f"conv engine: input channel parallel {c.input_channel_parallel}, output channel parallel "
                         f"{c.output_channel_parallel}, pixel parallel {c.pixel_parallel}, kernel {c.kernel_size}, "
                         f"stride {c.stride}, nonlinear {', '.join(c.nonlinear) or 'none'}")  # fmt: skip
        if self.eltwise:
            e = self.eltwise
            lines.append(f"eltwise engine: {', '.join(e.elew_type)}; nonlinear {', '.join(e.nonlinear) or 'none'}")
        if self.pool:
            p = self.pool
            limits = ", ".join(f"{kind} kernel {lim.kernel_size} stride {lim.stride}"
                               for kind, lim in (("avg", p.avg_limit), ("max", p.max_limit)) if lim)  # fmt: skip
            lines.append(f"pool engine: {', '.join(p.pool_type)}; {limits}")
        if self.dwconv:
            d = self.dwconv
            lines.append(f"depthwise-conv engine: kernel {d.kernel_size}, stride {d.stride}, nonlinear "
                         f"{', '.join(d.nonlinear) or 'none'}")  # fmt: skip
        if self.alu:
            a = self.alu
            lines.append(f"alu engine: {', '.join(a.alu_type)}; kernel {a.kernel_size}, stride {a.stride}, pad "
                         f"left/top {a.pad_left}/{a.pad_top}, right/bottom {a.pad_right}/{a.pad_bottom}; nonlinear "
                         f"{', '.join(a.nonlinear) or 'none'}")  # fmt: skip
        for b in self.banks:
            lines.append(f"bank {b.name} ({b.type}): {b.bank_num} x {b.bank_width} x {b.bank_depth}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- loading
def _tuple(v: list | None) -> tuple[str, ...]:
    return tuple(v or ())


def _limit(d: dict | None) -> PoolLimit | None:
    return None if d is None else PoolLimit(Range.parse(d["kernel_size"]), Range.parse(d["stride"]))


def _target(d: dict[str, Any], type_codes: dict[str, int]) -> Target:
    c, e, p, w, a = (d.get(k) for k in ("conv", "eltwise", "pool", "dwconv", "alu"))
    fingerprint = int(d["fingerprint"], 16)
    feature_code = int(d["feature_code"], 16)
    expected = type_codes[d["type"]] << 56 | d["isa_version"] << 48 | feature_code
    if expected != fingerprint:
        raise ValueError(f"{_DATA.name}: {d['name']} has fingerprint {d['fingerprint']}, expected 0x{expected:016x}")
    return Target(
        name=d["name"],
        type=d["type"],
        isa_version=d["isa_version"],
        feature_code=feature_code,
        fingerprint=fingerprint,
        needs_ipu_build=d["needs_ipu_build"],
        batch=d["batch"],
        banks=tuple(BankGroup(**{k: b[k] for k in ("name", "type", "bank_num", "bank_width", "bank_depth")})
                    for b in d["banks"]),
        load_channel_parallel=(d["load"] or {}).get("channel_parallel"),
        save_channel_parallel=(d["save"] or {}).get("channel_parallel"),
        save_argmax=bool((d["save"] or {}).get("argmax")),
        conv=None
        if c is None
        else ConvEngine(c["input_channel_parallel"], c["output_channel_parallel"], c["pixel_parallel"],
                        c["weight_bank"], c["bias_bank"], c["channel_augmentation"], _tuple(c["nonlinear"]),
                        Range.parse(c["kernel_size"]), Range.parse(c["stride"]), _range(c["stride_out_h"])),
        eltwise=None
        if e is None
        else EltwiseEngine(e["channel_parallel"], e["pixel_parallel"], _tuple(e["elew_type"]), _tuple(e["nonlinear"])),
        pool=None
        if p is None
        else PoolEngine(p["channel_parallel"], p["pixel_parallel"], _tuple(p["pool_type"]), _tuple(p["nonlinear"]),
                        _limit(p["avg_limit"]), _limit(p["max_limit"])),
        dwconv=None
        if w is None
        else DwconvEngine(w["channel_parallel"], w["pixel_parallel"], w["weight_bank"], w["bias_bank"],
                          _tuple(w["nonlinear"]), _range(w["kernel_size"]), _range(w["stride"])),
        alu=None
        if a is None
        else AluEngine(a["channel_parallel"], a["pixel_parallel"], a["weight_bank"], a["bias_bank"],
                       _tuple(a["alu_type"]), _tuple(a["nonlinear"]), _range(a["kernel_size"]), _range(a["stride"]),
                       _range(a["stride_out_h"]), _range(a["pad_left"]), _range(a["pad_right"]),
                       _range(a["pad_top"]), _range(a["pad_bottom"])),
        move=d["move"],
    )  # fmt: skip


@functools.cache
def _load() -> tuple[dict[str, Target], dict[int, Target]]:
    doc = json.loads(_DATA.read_text())
    targets = [_target(d, doc["type_codes"]) for d in doc["targets"]]
    by_name = {t.name: t for t in targets}
    by_fingerprint = {t.fingerprint: t for t in targets}
    if len(by_name) != len(targets) or len(by_fingerprint) != len(targets):
        raise ValueError(f"{_DATA.name}: target names and fingerprints must be unique")
    return by_name, by_fingerprint


def all_targets() -> tuple[Target, ...]:
    """Every registered target, in name order."""
    return tuple(sorted(_load()[0].values(), key=lambda t: t.name))


def list_targets() -> tuple[str, ...]:
    """The names `get_target` accepts (fingerprints of these, and of any DPUCZDX8G ISA1 configuration, too)."""
    return tuple(t.name for t in all_targets())


# ---------------------------------------------------------------------------------------------- DPUCZDX8G ISA1
_ISA1_PP = (4, 4, 8, 4, 8, 8, 8, 8, 4, 2, 2, 2)  # indexed by the ARCH field (fingerprint bits 3..0)
_ISA1_CP = (8, 10, 8, 12, 10, 12, 14, 16, 4, 6, 8, 4)  # input and output channel parallel alike
_ISA1_ALU_TYPES = ("dwconv", "prelu", "avg_pool", "max_pool", "leaky_relu", "max_reduce", "dwconv_no_bias", "hsigmoid",
                   "w16b0")  # fmt: skip


def _bits(value: int, low: int, width: int) -> int:
    return (value >> low) & ((1 << width) - 1)


def decode_dpuczdx8g_isa1(fingerprint: int) -> Target:
    """The DPUCZDX8G ISA1 configuration a fingerprint describes (VAIQ35 3.3), registered or not.

    Feature-code fields: bits 3..0 ARCH (pixel / channel parallelism), 11..8 ALU pixel parallel, 25..24 image bank
    groups, 26 channel augmentation, 28 conv leaky-relu, 29 ALU leaky-relu, 30 argmax in the save engine, 33..32 and
    35..34 the conv and ALU width parallelism that set `stride_out_h`.
    """
    if _bits(fingerprint, 56, 8) != 1 or _bits(fingerprint, 48, 8) != 1:
        raise UnknownTargetError(f"fingerprint 0x{fingerprint:016x} is not a DPUCZDX8G ISA1 fingerprint")
    arch = _bits(fingerprint, 0, 4)
    if arch >= len(_ISA1_PP):
        raise UnknownTargetError(
            f"fingerprint 0x{fingerprint:016x} has the DPUCZDX8G ISA1 ARCH field {arch}, but only "
            f"0-{len(_ISA1_PP) - 1} exist. Fix: check the fingerprint your DPU reports (xdputil query)."
        )
    pp, cp = _ISA1_PP[arch], _ISA1_CP[arch]
    alu_pp, bank_groups = _bits(fingerprint, 8, 4), _bits(fingerprint, 24, 2)
    augment, conv_leaky, alu_leaky, argmax = (_bits(fingerprint, b, 1) for b in (26, 28, 29, 30))
    conv_wp, alu_wp = 2 ** _bits(fingerprint, 32, 2), 2 ** _bits(fingerprint, 34, 2)

    def out_h(wp: int) -> Range:
        return Range.parse(f"1-{4 if wp == 1 or pp // wp >= 4 else pp // wp}")

    banks = [BankGroup(f"VB{i}", "Virtual", pp, cp, 2048) for i in range(bank_groups)]
    banks += [BankGroup("CONVW", "Param", cp, cp, 2048), BankGroup("DWCONVW", "Param", 1, cp, 2048),
              BankGroup("BIAS", "Param", 1, cp, 2048)]  # fmt: skip
    conv_nl = ("relu", "leaky_relu", "relu_six") if conv_leaky else ("relu", "relu_six")
    alu_nl = ("relu", "leaky_relu", "relu_six") if alu_leaky else ("relu", "relu_six")
    one_to = Range.parse
    conv = ConvEngine(cp, cp, pp, "CONVW", "BIAS", 2 * cp if augment else None, conv_nl, one_to("1-16"), one_to("1-8"),
                      out_h(conv_wp))  # fmt: skip
    alu = AluEngine(cp, alu_pp, "DWCONVW", "BIAS", _ISA1_ALU_TYPES, alu_nl, one_to("1-256"), one_to("1-256"),
                    out_h(alu_wp), one_to("0-15"), one_to("0-255"), one_to("0-15"), one_to("0-255"))  # fmt: skip
    return Target(
        name=f"DPUCZDX8G_ISA1_B{pp * cp * cp * 2}_{fingerprint:016X}",
        type="DPUCZDX8G",
        isa_version=1,
        feature_code=_bits(fingerprint, 0, 48),
        fingerprint=fingerprint,
        needs_ipu_build=False,
        batch=None,
        banks=tuple(banks),
        load_channel_parallel=cp,
        save_channel_parallel=cp,
        save_argmax=bool(argmax),
        conv=conv,
        eltwise=EltwiseEngine(cp, alu_pp, ("add", "mult"), ("relu",)),
        pool=None,
        dwconv=None,
        alu=alu,
        move=False,
    )


# ---------------------------------------------------------------------------------------------- lookup
def get_target(name_or_fingerprint: str) -> Target:
    """The target with this name, or this fingerprint (a string starting with '0x', hex, any case)."""
    if not isinstance(name_or_fingerprint, str):
        raise InputError(
            f"a DPU target is a name such as 'DPUCZDX8G_ISA1_B4096' or a fingerprint string such as "
            f"'0x0101000056010407', got {type(name_or_fingerprint).__name__} {name_or_fingerprint!r}."
        )
    by_name, by_fingerprint = _load()
    key = name_or_fingerprint.strip()
    if key.lower().startswith("0x"):
        try:
            fingerprint = int(key, 16)
        except ValueError:
            raise UnknownTargetError(
                f"{name_or_fingerprint!r} starts with '0x' but is not a hexadecimal fingerprint. Fix: pass the 16 hex "
                "digits your DPU reports, e.g. '0x0101000056010407' (DPUCZDX8G_ISA1_B4096)."
            ) from None
        if fingerprint in by_fingerprint:
            return by_fingerprint[fingerprint]
        if _bits(fingerprint, 56, 8) == 1 and _bits(fingerprint, 48, 8) == 1:
            return decode_dpuczdx8g_isa1(fingerprint)
        raise UnknownTargetError(
            f"fingerprint {key} is not registered, and only DPUCZDX8G ISA1 fingerprints (0x0101...) can be decoded "
            "without a registered description. Fix: pass a registered target name or fingerprint; "
            "pytorch_nndct.targets.list_targets() lists the names."
        )
    if key in by_name:
        return by_name[key]
    lower = {n.lower(): n for n in by_name}  # names are case-sensitive, as the original's; suggest any case
    near = [lower[n] for n in difflib.get_close_matches(key.lower(), list(lower), n=3, cutoff=0.5)]
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise UnknownTargetError(
        f"{name_or_fingerprint!r} is not a DPU target name.{hint} pytorch_nndct.targets.list_targets() lists all "
        f"{len(by_name)} names; a fingerprint ('0x...') works too."
    )

"""QuantTable: the fix positions of one quantized model, as quant_info.json holds them (SPEC 3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import QuantSpec

__all__ = ["QuantTable"]


@dataclass
class QuantTable:
    """Parameter specs by state-dict name, output specs by node name, plus the file's flags."""

    model: str
    params: dict[str, QuantSpec] = field(default_factory=dict)
    outputs: dict[str, QuantSpec] = field(default_factory=dict)
    graph_md5: str = ""
    fast_finetuned: bool = False
    bias_corrected: bool = False
    mixed_precision: list[str] = field(default_factory=list)  # output keys widened by sensitivity (quant/mixed.py)
    equalized: list[tuple[str, str]] | None = None  # conv pairs cross-layer equalization kept (None: not recorded)

    def fix_pos(self, key: str) -> int | None:
        spec = self.params.get(key) or self.outputs.get(key)
        return None if spec is None else spec.fix_pos

    def set_fix_pos(self, key: str, fix_pos: int) -> None:
        if key in self.params:
            self.params[key] = self.params[key].with_fix_pos(fix_pos)
        else:
            self.outputs[key] = self.outputs[key].with_fix_pos(fix_pos)

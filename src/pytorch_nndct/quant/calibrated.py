"""Calibrated values between the quantization points of a model and a QuantTable (quant_info.json).

`table_from_points` reads what calibration found (fix positions, float steps and zero points) into a table;
`load_table` gives test-mode points their values from a table. Parameters whose grid comes from the tensor
itself (float steps, per-channel) and float data types carry no value: they are recomputed from the tensor.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..errors import NndctError
from .plan import QuantPlan
from .runtime import ActPoint, ParamQuant
from .table import QuantTable

__all__ = ["load_table", "table_from_points"]

log = logging.getLogger("pytorch_nndct")


def table_from_points(expected: QuantTable, plan: QuantPlan, points: dict[str, Any]) -> QuantTable:
    """The calibrated table: `expected` (the plan's specs by key) with each point's fix position, or float step
    and zero point. Raises NndctError if no calibration forward pass ran."""
    table = dataclasses.replace(expected, params=dict(expected.params), outputs=dict(expected.outputs))
    missing = []
    for p in plan.params:
        pq: ParamQuant = points[p.key]
        spec = pq.specs[p.role]
        if spec.is_int and not spec.derived and spec.fix_pos is None:
            missing.append(p.key)
        table.params[p.key] = p.spec.with_fix_pos(spec.fix_pos)
    unseen, state = [], None
    for key, spec in plan.outputs.items():
        point = points.get(key)
        if not isinstance(point, ActPoint) or not spec.is_int:
            continue
        state, value = point.state, point.observer.value
        if value is None:
            unseen.append(key)
        elif spec.float_scale:
            table.outputs[key] = spec.with_scale(*value)
        else:
            table.outputs[key] = spec.with_fix_pos(value)
    if state is None:
        state = next((pt.state for pt in points.values() if isinstance(pt, ActPoint | ParamQuant)), None)
    if state is None or not state.calibrated or (missing and len(missing) == len(plan.params)):
        raise NndctError(
            "export_quant_config() was called before any calibration forward pass. Fix: run "
            "quantizer.quant_model(x) on calibration data (about 100 to 1000 images) first."
        )
    if unseen:
        log.warning("%d output(s) were never reached during calibration: %s", len(unseen), unseen[:5])
    return table


def load_table(plan: QuantPlan, points: dict[str, Any], table: QuantTable) -> None:
    """Test mode: give every point its calibrated value from `table` (fix positions, float steps)."""
    for p in plan.params:
        loaded = table.params.get(p.key)
        points[p.key].specs[p.role] = p.spec.with_fix_pos(loaded.fix_pos if loaded is not None else None)
    for key, point in points.items():
        if isinstance(point, ActPoint):
            loaded = table.outputs.get(key)
            point.fix_pos = loaded.fix_pos if loaded is not None else None
            if loaded is not None and loaded.is_int and point.spec.is_int and loaded.bitwidth != point.spec.bitwidth:
                point.spec = dataclasses.replace(point.spec, bitwidth=loaded.bitwidth)  # mixed precision
            point.scale = (loaded.scale, loaded.zero_point) if loaded is not None and loaded.scale else None

"""Every op has an entry in every per-op table, or is listed as not needing one, with a reason."""

from __future__ import annotations

from pytorch_nndct.codegen.emit import EMITTERS, _functional
from pytorch_nndct.ir.aten_map import NOT_FROM_ATEN, PRODUCES
from pytorch_nndct.ir.ops import OPS, Op
from pytorch_nndct.nn import FUNCTIONS


def test_every_op_has_a_definition():
    assert set(OPS) == set(Op)


def test_every_op_comes_from_a_converter_or_has_a_reason():
    missing = [op.value for op in Op if op not in PRODUCES and op not in NOT_FROM_ATEN]
    assert not missing, f"ops no converter produces and no reason is given for: {missing}"
    assert all(NOT_FROM_ATEN[op] for op in NOT_FROM_ATEN)


def test_every_op_has_an_emitter_and_generic_ones_a_runtime_function():
    assert set(EMITTERS) == set(Op)
    generic = [op for op, fn in EMITTERS.items() if fn is _functional]
    missing = [op.value for op in generic if op.value not in FUNCTIONS]
    assert not missing, f"ops emitted as nndct_nn.Module(...) without a runtime function: {missing}"

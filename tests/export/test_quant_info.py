"""quant_info.json sections for the CPU/GPU numerics: float steps (exact round trip) and float data types."""

from __future__ import annotations

import json

import pytest

from pytorch_nndct.export.quant_info import QuantInfoError, check_table, read_quant_info, write_quant_info
from pytorch_nndct.quant.spec import DataType, QuantSpec
from pytorch_nndct.quant.table import QuantTable


def _table() -> QuantTable:
    table = QuantTable("Net", graph_md5="abc")
    table.params["conv.weight"] = QuantSpec(8, fix_pos=7)
    table.params["conv.bias"] = QuantSpec(dtype=DataType.FLOAT16)
    table.params["fc.weight"] = QuantSpec(8, float_scale=True, per_channel=True)
    table.outputs["input_0"] = QuantSpec(8, float_scale=True, symmetric=False).with_scale(0.1 + 2**-40, 131)
    table.outputs["relu_2"] = QuantSpec(16, float_scale=True).with_scale(3.0517578125e-05 * 1.1)
    table.outputs["add_3"] = QuantSpec(dtype=DataType.BFLOAT16)
    return table


def test_float_steps_and_data_types_round_trip(tmp_path):
    table = _table()
    write_quant_info(table, tmp_path)
    doc = json.loads((tmp_path / "quant_info.json").read_text())
    assert doc["param"] == {"Net::conv.weight": [[8, 7]], "Net::fc.weight": [[8, None]]}
    assert doc["output"] == {"Net::input_0": [[8, None]], "Net::relu_2": [[16, None]]}
    assert doc["float_scale"] == {"Net::input_0": [[0.1 + 2**-40, 131]], "Net::relu_2": [[3.0517578125e-05 * 1.1, 0]]}
    assert doc["dtype"]["param"] == {"Net::conv.weight": ["int"], "Net::conv.bias": ["float16"],
                                     "Net::fc.weight": ["int"]}  # fmt: skip
    assert doc["dtype"]["output"]["Net::add_3"] == ["bfloat16"] and doc["dtype"]["input"] == {}
    loaded, _ = read_quant_info(tmp_path, "Net")
    assert loaded.outputs["input_0"].scale == 0.1 + 2**-40 and loaded.outputs["input_0"].zero_point == 131
    assert loaded.outputs["relu_2"].scale == table.outputs["relu_2"].scale  # bit for bit
    assert loaded.params["conv.bias"].dtype is DataType.FLOAT16 and loaded.outputs["add_3"].dtype is DataType.BFLOAT16
    check_table(loaded, table, doc, "quant_info.json")


def test_only_int_tables_have_no_new_sections(tmp_path):
    table = QuantTable("Net")
    table.params["w"] = QuantSpec(8, fix_pos=5)
    write_quant_info(table, tmp_path)
    assert set(json.loads((tmp_path / "quant_info.json").read_text())) == {
        "param", "output", "input", "fast_finetuned", "bias_corrected", "version", "graph_md5"}  # fmt: skip


def test_calibrated_with_other_settings_is_refused(tmp_path):
    table = _table()
    write_quant_info(table, tmp_path)
    loaded, doc = read_quant_info(tmp_path, "Net")
    other = _table()
    other.outputs["add_3"] = QuantSpec(dtype=DataType.FLOAT16)
    with pytest.raises(QuantInfoError, match=r"other data types: add_3 \(bfloat16, this quantizer: float16\)"):
        check_table(loaded, other, doc, "quant_info.json")
    other = _table()
    other.outputs["relu_2"] = QuantSpec(16)  # power of two now
    with pytest.raises(QuantInfoError, match=r"other scale types: relu_2 \(16 bit, float step"):
        check_table(loaded, other, doc, "quant_info.json")


@pytest.mark.parametrize("entry", [[[0.0, 0]], [["x", 0]], [[0.5]], [[0.5, 1.5]]])
def test_malformed_float_scale_entries(tmp_path, entry):
    write_quant_info(_table(), tmp_path)
    path = tmp_path / "quant_info.json"
    doc = json.loads(path.read_text())
    doc["float_scale"]["Net::relu_2"] = entry
    path.write_text(json.dumps(doc))
    with pytest.raises(QuantInfoError, match=r"float_scale entry 'Net::relu_2'.*recalibrate"):
        read_quant_info(tmp_path, "Net")

"""An .xmodel is one protobuf message: export_xmodel refuses constants beyond 2 GiB with a clear error."""

from __future__ import annotations

import pytest

from pytorch_nndct.errors import NndctError
from pytorch_nndct.export import xmodel
from pytorch_nndct.export.deploy import DeployGraph, XOp


def test_constants_beyond_the_protobuf_limit_are_refused(tmp_path, monkeypatch):
    graph = DeployGraph("Big", [XOp("w", "const", [4], {"data": ("bytes", bytearray(16))})])
    assert xmodel.const_bytes(graph) == 16
    monkeypatch.setattr(xmodel, "PROTOBUF_LIMIT", 16)
    with pytest.raises(NndctError, match=r"2 GiB.*Fix: export_onnx_model"):
        xmodel.write_xmodel(graph, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    monkeypatch.setattr(xmodel, "PROTOBUF_LIMIT", 17)
    assert xmodel.write_xmodel(graph, tmp_path / "out").stat().st_size > 16

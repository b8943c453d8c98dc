"""The front end: export with a dynamic batch, the concrete fallback, structured inputs, clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent, flat_tensors
from pytorch_nndct.ir.ops import Op


class Branchy(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, torch.jit.trace bakes it in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.mean() > -100:  # always true on the example inputs
            return torch.relu(y) * 2
        return -y


class DictInTupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, batch: dict) -> tuple:
        y = torch.relu(self.conv(batch["image"])) * batch["mask"]
        return y.mean((2, 3)), {"logits": self.fc(y.flatten(1)), "scale": batch["scale"]}


class ThroughNumpy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = torch.from_numpy(np.ascontiguousarray(x.numpy() * 2))  # leaves torch here
        return doubled + 1


class Unknown(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(torch.cumsum(x, dim=1), 1, dims=2)


def _regenerate(model, args, tmp_path):
    graph = nd.optimize(nd.trace(model, args))
    return graph, nd.load_module(nd.write_module(graph, tmp_path))


def test_data_dependent_branch_falls_back_and_is_baked_in(tmp_path, caplog):
    model = Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(model, x, tmp_path)
    text = caplog.text
    assert "falling back to a concrete trace" in text
    assert "test_trace.py:" in text and "baked into the captured graph" in text
    assert [n.op for n in graph.nodes] == [Op.INPUT, Op.CONV2D, Op.RELU, Op.MUL]
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x))


def test_dict_input_and_tuple_output(tmp_path):
    model = DictInTupleOut().eval()
    batch = {"image": torch.randn(2, 3, 6, 6), "mask": torch.rand(2, 1, 6, 6), "scale": 3}
    graph, loaded = _regenerate(model, (batch,), tmp_path)
    assert [s.name for s in graph.input_specs] == ["batch"]
    other = {"image": torch.randn(4, 3, 6, 6), "mask": torch.rand(4, 1, 6, 6), "scale": 3}
    with torch.no_grad():
        for b in (batch, other):
            ref, out = model(b), loaded(b)
            assert isinstance(out, tuple) and set(out[1]) == {"logits", "scale"}
            assert out[1]["scale"] == 3
            for r, o in zip(flat_tensors(ref), flat_tensors(out)):
                assert_float_equivalent(r, o)


def test_dynamic_batch_reshape_uses_symbolic_size(tmp_path):
    class ViewByBatch(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1).sum(1)

    graph, loaded = _regenerate(ViewByBatch(), torch.randn(2, 3, 4), tmp_path)
    assert graph.find(Op.SIZE), "the batch size should stay symbolic"
    x = torch.randn(7, 3, 4)
    assert_float_equivalent(loaded(x), x.view(7, -1).sum(1))


def test_unknown_ops_become_float_aten_ops_with_one_warning(tmp_path, caplog):
    x = torch.randn(2, 3, 4)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(Unknown(), x, tmp_path)
    records = [r for r in caplog.records if "no quantized equivalent" in r.getMessage()]
    assert len(records) == 1
    assert "aten.cumsum.default" in records[0].getMessage() and "aten.roll.default" in records[0].getMessage()
    assert {n.attrs["target"] for n in graph.find(Op.ATEN)} == {"aten.cumsum.default", "aten.roll.default"}
    assert_float_equivalent(loaded(x), Unknown()(x))


def test_tensor_attribute_and_parameter_used_directly(tmp_path):
    class PosEmbed(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 4, 8))
            self.cls = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            cls = self.cls.expand(x.shape[0], -1, -1)
            return torch.cat([cls, x + self.pos], dim=1)

    model = PosEmbed()
    _, loaded = _regenerate(model, torch.randn(2, 4, 8), tmp_path)
    x = torch.randn(3, 4, 8)
    assert_float_equivalent(loaded(x), model(x))


def test_in_place_ops_on_views_are_kept_exact(tmp_path):
    class MaskFill(nn.Module):
        def forward(self, x):
            mask = x.new_zeros(x.shape[-2:])
            mask[:, :2] = 1.0
            return x * mask

    x = torch.randn(2, 3, 4, 4)
    _, loaded = _regenerate(MaskFill(), x, tmp_path)
    assert_float_equivalent(loaded(x), MaskFill()(x))


# ----------------------------------------------------------------------------------------- errors
def test_not_a_module_is_a_clear_error():
    with pytest.raises(nd.InputError, match=r"needs a torch.nn.Module, got OrderedDict"):
        nd.trace(nn.Linear(2, 2).state_dict(), torch.randn(1, 2))


def test_example_input_of_wrong_type():
    with pytest.raises(nd.InputError, match=r"example input #0 is a ndarray.*Pass tensors"):
        nd.trace(nn.Linear(2, 2), np.zeros((1, 2), dtype=np.float32))


def test_example_input_of_wrong_shape_names_shapes_and_line():
    with pytest.raises(nd.InputError) as info:
        nd.trace(nn.Conv2d(3, 4, 3), torch.randn(1, 5, 8, 8))
    msg = str(info.value)
    assert "(1, 5, 8, 8)" in msg and "expected input" in msg and "Fix:" in msg
    assert "\n" not in msg


def test_model_neither_method_accepts_names_the_line():
    with pytest.raises(nd.CaptureError) as info:
        nd.trace(ThroughNumpy(), torch.randn(2, 3))
    msg = str(info.value)
    assert "test_trace.py:" in msg and "torch.export failed" in msg and "Fix:" in msg
    line = next(k for k, text in enumerate(open(__file__).read().splitlines(), 1) if "leaves torch here" in text)
    assert f"test_trace.py:{line}" in msg


def test_unsupported_output_type():
    class ReturnsObject(nn.Module):
        def forward(self, x):
            return object()

    with pytest.raises(nd.CaptureError, match="returns a object"):
        nd.trace(ReturnsObject(), torch.randn(1))


def test_training_mode_is_restored():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    graph = nd.trace(model, torch.randn(2, 3))
    assert model.training
    assert graph.find(Op.DROPOUT)  # traced in eval mode: dropout is the identity, removed by optimize

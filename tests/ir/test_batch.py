"""A batch-1 example keeps the batch symbolic: captured at batch 1, the regenerated model runs at any batch."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

import pytorch_nndct as nd
from helpers import assert_float_equivalent, flat_tensors
from pytorch_nndct.ir.batch import batch_of, divergence, is_batched, mismatch, widen


class ViewBySize(nn.Module):
    """conv, then `view(x.size(0), -1)` and a linear head (the classic classifier flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


class ReshapeMinusOne(nn.Module):
    """`reshape(-1, C*H*W)`: the batch is whatever is left."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(-1, 3 * 6 * 6))


class ChannelShuffle(nn.Module):
    """shufflenet's channel shuffle: view(n, groups, c // groups, h, w) -> transpose -> view(n, c, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(y)


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Attention(nn.Module):
    """Patches -> tokens -> multi-head self-attention written with reshape/permute, as vision transformers do."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 2, stride=2)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # B, N, C
        b, n, c = t.shape
        qkv = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out).mean(1)


class ImageAndMask(nn.Module):
    """Two inputs: an image and a [batch, features] mask."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(image).flatten(2).mean(-1) * mask


class FcOfFixedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))  # fixes the batch at 1


class FixedReshape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, 3 * 6 * 6) * 2  # also fixes the batch


class BatchOneBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) == 1:
            return x.squeeze(0) * 2  # batch 1 only
        return x


def _line(marker: str) -> int:
    return next(k for k, text in enumerate(open(__file__).read().splitlines(), 1) if marker in text)


def _regenerate(model, args, tmp_path):
    graph = nd.optimize(nd.trace(model, args))
    return graph, nd.load_module(nd.write_module(graph, tmp_path))


MODELS = {
    "view_by_size": (ViewBySize, (3, 6, 6)),
    "reshape_minus_one": (ReshapeMinusOne, (3, 6, 6)),
    "channel_shuffle": (ChannelShuffle, (3, 6, 6)),
    "flatten": (FlattenHead, (3, 6, 6)),
    "attention": (Attention, (3, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_captured_at_batch_one_runs_at_any_batch(case, tmp_path, caplog):
    cls, shape = MODELS[case]
    torch.manual_seed(0)
    model = cls().eval()
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(model, torch.randn(1, *shape), tmp_path)
    assert "batch" not in caplog.text, caplog.text
    assert graph.inputs[0].meta.shape[0] == "B"
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, *shape)
            ref, out = model(x), loaded(x)
            assert out.shape == ref.shape
            assert_float_equivalent(ref, out)


def test_batched_second_input_follows_the_batch(tmp_path):
    model = ImageAndMask().eval()
    graph, loaded = _regenerate(model, (torch.randn(1, 3, 6, 6), torch.rand(1, 4)), tmp_path)
    assert [n.meta.shape[0] for n in graph.inputs] == ["B", "B"]
    with torch.no_grad():
        for batch in (1, 3):
            args = (torch.randn(batch, 3, 6, 6), torch.rand(batch, 4))
            assert_float_equivalent(model(*args), loaded(*args))


def test_nested_inputs_follow_the_batch(tmp_path):
    class DictInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, batch: dict) -> dict:
            y = self.conv(batch["image"]) * batch["weights"][0]
            return {"pooled": y.mean((2, 3)), "flat": y.reshape(y.shape[0], -1)}

    def inputs(n):
        return {"image": torch.randn(n, 3, 4, 4), "weights": [torch.rand(n, 1, 4, 4)]}

    model = DictInput().eval()
    graph, loaded = _regenerate(model, (inputs(1),), tmp_path)
    assert all(n.meta.shape[0] == "B" for n in graph.inputs)
    with torch.no_grad():
        for batch in (1, 3):
            x = inputs(batch)
            for r, o in zip(flat_tensors(model(x)), flat_tensors(loaded(x)), strict=True):
                assert_float_equivalent(r, o)


@pytest.mark.parametrize(
    ("cls", "marker", "reason"),
    [
        (FcOfFixedView, "fixes the batch at 1", r"a and b must have same reduction dim, but got \[1, 108\*B\]"),
        (FixedReshape, "also fixes the batch", r"shape '\[1, 108\]' is invalid for input of size 108\*B"),
    ],
)
def test_code_that_fixes_the_batch_keeps_it_and_names_the_line(cls, marker, reason, tmp_path, caplog):
    model = cls().eval()
    x = torch.randn(1, 3, 6, 6)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(model, x, tmp_path)
    records = [r.getMessage() for r in caplog.records if "keeps the batch size" in r.getMessage()]
    assert len(records) == 1, caplog.text
    assert f"test_batch.py:{_line(marker)}" in records[0]
    assert re.search(reason, records[0]), records[0]
    assert graph.inputs[0].meta.shape[0] == 1
    with torch.no_grad():
        assert_float_equivalent(model(x), loaded(x))


def test_branch_on_batch_one_keeps_batch_one(tmp_path, caplog):
    model = BatchOneBranch()
    x = torch.randn(1, 3, 4)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(model, x, tmp_path)
    assert "does not reproduce the model at batch 1" in caplog.text
    assert "(1, 3, 4) torch.float32, not (3, 4) torch.float32" in caplog.text
    assert f"takes another path at batch 1 from {__file__}:{_line('batch 1 only')}" in caplog.text
    assert graph.inputs[0].meta.shape[0] == 1
    assert_float_equivalent(model(x), loaded(x))


def test_concrete_fallback_says_it_fixes_the_batch(tmp_path, caplog):
    class ValueBranch(nn.Module):
        def forward(self, x):
            if x.sum() > -1e9:  # export refuses; the concrete trace bakes the branch in
                return x.view(x.size(0), -1) * 2
            return x

    x = torch.randn(1, 3, 4)
    with caplog.at_level(logging.WARNING, logger="pytorch_nndct"):
        graph, loaded = _regenerate(ValueBranch(), x, tmp_path)
    assert "falling back to a concrete trace" in caplog.text and "fixes the batch size at 1" in caplog.text
    assert graph.inputs[0].meta.shape == (1, 3, 4)
    assert_float_equivalent(loaded(x), x.view(1, -1) * 2)


# ----------------------------------------------------------------------------------------- helpers
def test_which_inputs_are_batched():
    image, mask, scalar = torch.randn(1, 3, 4, 4), torch.ones(1, 7), torch.tensor([0.5])
    assert batch_of((image, mask)) == 1 and batch_of(({"x": [image]},)) == 1
    assert batch_of((scalar, image)) is None  # a one-element vector first: no batch
    assert batch_of((torch.tensor(2.0),)) is None and batch_of((3,)) is None
    assert is_batched(image, 1) and is_batched(mask, 1) and not is_batched(scalar, 1)
    assert is_batched(torch.randn(4), 4) and not is_batched(torch.randn(4, 2), 1)
    wide = widen((image, {"m": [mask, scalar]}, 3), 1)
    assert wide[0].shape == (2, 3, 4, 4) and torch.equal(wide[0][1], image[0])
    assert wide[1]["m"][0].shape == (2, 7) and wide[1]["m"][1] is scalar and wide[2] == 3


def test_mismatch_names_what_differs():
    a = torch.randn(2, 3)
    assert mismatch((a, 1), (a.clone(), 1)) is None
    assert mismatch(a, a + 1e-7 * a.abs().max()) is None  # float rounding is not a difference
    assert mismatch(a, a[None]) == "output 0 is (1, 2, 3) torch.float32, not (2, 3) torch.float32"
    assert "differs by up to" in mismatch(a, a + 1)
    assert mismatch(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0])) is None
    assert "differs" in mismatch(torch.tensor([float("nan")]), torch.tensor([0.0]))
    assert "returns" in mismatch((a,), [a]) and "output 1 is 2, not 1" in mismatch((a, 1), (a, 2))
    assert mismatch(torch.arange(3), torch.arange(3) + 1) == "output 0 has other values"


def test_divergence_names_the_first_line_that_differs():
    x = torch.randn(1, 3, 6, 6)
    assert divergence(ViewBySize().eval(), (x,)) == ""  # the same operations at batch 1 and 2
    assert divergence(BatchOneBranch(), (x,)) == f"{__file__}:{_line('batch 1 only')}"

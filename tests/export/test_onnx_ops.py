"""ONNX lowerings beyond the DPU's core ops: norms, gelu, attention, pooling to k x k, layout ops, ATen float
ops and constant subgraphs. Each tiny model is calibrated for ONNX, exported, run in onnxruntime and compared
with the simulation point by point (integer points within 1 LSB, float-type points within 1 ulp) and end to
end."""

from __future__ import annotations

import json
import math

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx_check import compare
from test_onnx import ONNX_CONFIG
from test_xmodel import _quantize
from torch import nn

from pytorch_nndct.export.onnx_aten import ATEN_LOWERINGS
from pytorch_nndct.export.onnx_qdq import NOT_LOWERED, ONNX_LOWERINGS
from pytorch_nndct.ir.ops import Op
from pytorch_nndct.nn.functional import resolve_aten


def test_every_op_is_lowered_or_listed_with_a_reason():
    missing = [op.value for op in Op if op not in ONNX_LOWERINGS and op not in NOT_LOWERED]
    assert not missing, f"ops with no ONNX lowering and no reason given: {missing}"
    assert all(NOT_LOWERED.values()) and not set(NOT_LOWERED) & set(ONNX_LOWERINGS)


def test_every_aten_lowering_names_a_real_operator():
    for target in ATEN_LOWERINGS:
        resolve_aten(target)


def _check(model, example, tmp_path, opset=None, batches=None, types=(), x=None):
    """Calibrate for ONNX, export, compare with the simulation; returns the ONNX op types."""
    config = tmp_path / "onnx_config.json"
    config.write_text(json.dumps({**ONNX_CONFIG, **({"onnx_opset_version": opset} if opset else {})}))
    torch.manual_seed(0)
    quantizer = _quantize(model.eval(), example, batches or [example], tmp_path, quant_config_file=config)
    path = quantizer.export_onnx_model()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert set(types) <= ops, f"expected {set(types) - ops} in the ONNX graph"
    report = compare(quantizer, path, example if x is None else x)
    print(f"{type(model).__name__}: {report.points} points, worst {report.worst_lsb} LSB; end to end "
          f"{report.end_lsb} LSB / {report.end_abs:g}, {100 * report.end_equal:.1f}% equal")  # fmt: skip
    assert report.points > 0 and report.worst_lsb <= 1 and report.worst_rel <= 1, report.unequal
    assert report.end_lsb is None or report.end_lsb <= 1
    return ops


class ConvNeXtBlock(nn.Module):
    """torchvision's CNBlock: depthwise conv, permute, layer_norm over channels, linear, gelu, linear, layer scale."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1))
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        y = x + self.gamma * y
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("opset", [13, 17])
def test_convnext_block(opset, tmp_path):
    types = {"LayerNormalization"} if opset >= 17 else {"ReduceMean", "Sqrt"}
    _check(ConvNeXtBlock(), torch.randn(4, 3, 16, 16), tmp_path, opset, types=types | {"Erf"})


class NormsAndUpsampling(nn.Module):
    """group_norm, tanh-approximated gelu, transposed conv, pixel_shuffle, select, conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2, padding=0)
        self.mix = nn.Conv2d(2, 4, 3, padding=1)
        self.line = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.gn(self.conv(x)), approximate="tanh")
        y = F.pixel_shuffle(torch.relu(self.up(y)), 2)  # 8 -> 2 channels, 2x larger
        y = self.mix(y)
        return self.line(y.select(2, 3) + y[:, :, -1])


def test_group_norm_gelu_tanh_conv_transpose_pixel_shuffle(tmp_path):
    types = {"ConvTranspose", "DepthToSpace", "Tanh", "Gather"}
    _check(NormsAndUpsampling(), torch.randn(4, 3, 6, 6), tmp_path, types=types)


class AdaptivePools(nn.Module):
    """alexnet's adaptive pooling to 6x6 (a 2x2 window on 12x12, the identity on 6x6) and to 5x5 on 12x12
    (torch's uneven windows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * (36 + 36 + 25), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        six = F.adaptive_avg_pool2d(y, 6)
        same = F.adaptive_avg_pool2d(F.max_pool2d(y, 2), 6)
        five = F.adaptive_avg_pool2d(y, 5)
        return self.fc(torch.cat([six.flatten(1), same.flatten(1), five.flatten(1)], 1))


def test_adaptive_average_pooling_to_k_by_k(tmp_path):
    _check(AdaptivePools(), torch.randn(4, 3, 12, 12), tmp_path, types={"AveragePool", "ReduceMean"})


class Attention(nn.Module):
    """nn.MultiheadAttention with a float mask, then scaled_dot_product_attention with is_causal, then one with a
    boolean mask computed from the input."""

    def __init__(self, e: int = 16) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(e, 2, batch_first=True)
        self.qkv = nn.Linear(e, 3 * e)
        self.out = nn.Linear(e, 4)
        self.register_buffer("bias", torch.triu(torch.full((6, 6), -2.0), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mha(x, x, x, attn_mask=self.bias, need_weights=False)[0]
        q, k, v = self.qkv(y).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4).unbind(0)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        keep = (x.sum(-1) > -1.0)[:, None, None, :]
        z = F.scaled_dot_product_attention(z, k, v, attn_mask=keep, scale=0.5)
        return self.out(z.transpose(1, 2).flatten(2))


def test_attention(tmp_path):
    _check(Attention(), torch.randn(4, 6, 16), tmp_path, types={"Softmax", "Where", "MatMul"})


class TinyBert(nn.Module):
    """Token and position embeddings, layer_norm, masked self-attention over non-padding tokens, gelu."""

    def __init__(self, vocab: int = 20, e: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.tokens, self.positions = nn.Embedding(vocab, e), nn.Embedding(8, e)
        self.norm1, self.norm2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.qkv, self.proj = nn.Linear(e, 3 * e), nn.Linear(e, e)
        self.ff1, self.ff2 = nn.Linear(e, 2 * e), nn.Linear(2 * e, e)
        self.head = nn.Linear(e, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, length = ids.shape
        pos = torch.arange(length, device=ids.device)
        x = self.norm1(self.tokens(ids) + self.positions(pos))
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        pad = (ids == 0)[:, None, None, :]
        attn = scores.masked_fill(pad, torch.finfo(scores.dtype).min).softmax(-1)
        ctx = (attn @ v).transpose(1, 2).reshape(n, length, -1)
        x = self.norm2(x + self.proj(ctx))
        x = x + self.ff2(F.gelu(self.ff1(x)))
        return self.head(x[:, 0])


def test_tiny_bert(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (6, 8))
    ids[:, 5:] = 0  # padding
    types = {"Gather", "Equal", "Where", "LayerNormalization"}
    _check(TinyBert(), ids, tmp_path, types=types)


class ShiftedWindows(nn.Module):
    """swin's shifted windows: roll, a mask built in forward from new_zeros and slices filled in place (computed
    at export time), masked_fill, a relative position bias read through an index table."""

    def __init__(self, c: int = 8, w: int = 4) -> None:
        super().__init__()
        self.w = w
        self.embed = nn.Conv2d(3, c, 2, stride=2)
        self.qk = nn.Linear(c, 2 * c)
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2))
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + w - 1
        self.register_buffer("index", (rel[..., 0] * (2 * w - 1) + rel[..., 1]).flatten())
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # B, 8, 8, C
        n, h, wd, c = x.shape
        s, w = self.w // 2, self.w
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        mask = x.new_zeros((h, wd))
        count = 0
        for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                mask[hs, ws] = count
                count += 1
        mask = mask.view(h // w, w, wd // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        win = x.view(n, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        q, k = self.qk(win).chunk(2, -1)
        bias = self.table[self.index].view(w * w, w * w)
        attn = (q @ k.transpose(1, 2)).view(n, -1, w * w, w * w) + mask + bias
        out = (attn.softmax(-1).view(-1, w * w, w * w) @ win).view(n, h // w, wd // w, w, w, c)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(n, h, wd, c)
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return self.head(out.mean((1, 2)))


def test_shifted_windows(tmp_path):
    ops = _check(ShiftedWindows(), torch.randn(4, 3, 16, 16), tmp_path, types={"Concat", "Softmax"})
    assert "ConstantOfShape" not in ops, "the mask is computed at export time"


class FloatAten(nn.Module):
    """ATen float ops between linear layers: where, erf, exp, log, sqrt, rsqrt, pow, neg, abs, sum, amax, min,
    clamp, comparisons, logical_not, cumsum, index_select, stack, std, var, bmm, baddbmm, flip, zeros_like."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
        self.register_buffer("pick", torch.tensor([0, 2, 5, 7]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)  # B, 4, 8
        pos = torch.where(y > 0, torch.erf(y), torch.exp(-y.abs()))
        mag = torch.log(y.abs() + 1.0) + torch.sqrt(y * y + 1.0) * torch.rsqrt(y.pow(2) + 2.0)
        stats = torch.stack([y.sum(-1), y.amax(-1), y.min(-1).values, y.std(-1), y.var(-1, correction=0)], -1)
        keep = torch.logical_not(y < -0.5) & (y != 0.25)
        z = torch.clamp(pos + mag, -2.0, 2.0) * keep + torch.zeros_like(y)
        z = z.cumsum(-1).index_select(-1, self.pick).flip(-1)  # B, 4, 4
        z = torch.baddbmm(z, z, z.transpose(1, 2), beta=0.5, alpha=0.25) + torch.bmm(z, z)
        return self.b(torch.cat([z, stats[..., :4] - stats.neg()[..., :4]], -1))


def test_float_aten_ops(tmp_path):
    types = {"Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "ReduceSum", "ReduceMax", "ArgMin", "CumSum", "Not"}
    _check(FloatAten(), torch.randn(5, 4, 8), tmp_path, types=types)


class SentenceEncoder(TinyBert):
    """sentence-transformers' tail on a two-input encoder (ids, attention mask): mean pooling over the mask with
    sum / clamp / div, then linalg_vector_norm normalization (all-MiniLM-L6-v2's)."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length = ids.shape
        x = self.norm1(self.tokens(ids) + self.positions(torch.arange(length, device=ids.device)))
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        attn = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias).softmax(-1)
        x = self.norm2(x + self.proj((attn @ v).transpose(1, 2).reshape(n, length, -1)))
        x = x + self.ff2(F.gelu(self.ff1(x)))
        m = mask.unsqueeze(-1).expand(x.size()).float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def test_two_input_sentence_encoder(tmp_path):
    """Several inputs compared point by point (onnx_check.compare takes a tuple)."""
    from pytorch_nndct.apis import torch_quantizer

    torch.manual_seed(0)
    ids = torch.randint(1, 20, (6, 8))
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    ids[:, 5:] = 0
    config = tmp_path / "onnx_config.json"
    config.write_text(json.dumps(ONNX_CONFIG))
    model = SentenceEncoder().eval()
    kwargs = {"output_dir": tmp_path, "quant_config_file": config}
    calib = torch_quantizer("calib", model, (ids, mask), **kwargs)
    with torch.no_grad():
        calib.quant_model(ids, mask)
    calib.export_quant_config()
    quantizer = torch_quantizer("test", model, (ids, mask), **kwargs)
    path = quantizer.export_onnx_model()
    report = compare(quantizer, path, (ids, mask))
    assert report.points > 0 and report.worst_lsb <= 1 and report.worst_rel <= 1, report.unequal
    assert report.end_abs < 1e-5, report.end_abs

"""Small models made of ops XIR has built-ins for (issue 12): the .xmodel writes them as XIR's own op types."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BuiltinCNN(nn.Module):
    """swish, hard-swish, hard-tanh, clamp (max / min), prelu, groupnorm, instancenorm, elu, div, exp, neg,
    maximum, reflect padding, strided slices, mean / amax / sum, squeeze, flatten and stack."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.mid = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardtanh(F.silu(self.stem(x)), -0.75, 1.5)
        y = F.elu(self.inorm(self.gn(self.prelu(y)))) / 2.0
        y = torch.maximum(torch.exp(-y), y).clamp(max=1.25)
        y = F.hardswish(self.mid(F.pad(y, [1, 1, 1, 1], mode="reflect")))
        y = y[:, :, 1:7:2, 1:7]
        a = F.hardtanh(y.mean(dim=(2, 3), keepdim=True).squeeze(3).squeeze(2))
        b = y.amax(dim=3).sum(dim=2)
        return self.fc(torch.stack([a, b], dim=1).flatten(1))


class TinyEncoder(nn.Module):
    """A one-block vision transformer without layer norm: patch conv, class token (expand), attention written
    out (matmul, div, softmax), gelu MLP and the class token's row (select)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16) * 0.5)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.mlp1 = nn.Linear(16, 32)
        self.mlp2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
        t = t + self.proj(att @ v)
        t = t + self.mlp2(F.gelu(self.mlp1(t)))
        return self.head(t[:, 0])


def builtin_cases() -> dict:
    """name -> () -> (model, example, calibration batches), as test_xmodel's CASES."""

    def make(cls: type[nn.Module], shape: tuple[int, ...]):
        def case():
            torch.manual_seed(0)
            return cls().eval(), torch.randn(2, *shape), [torch.randn(8, *shape)]

        return case

    return {"builtin_cnn": make(BuiltinCNN, (3, 8, 8)), "tiny_encoder": make(TinyEncoder, (3, 8, 8))}

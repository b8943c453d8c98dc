"""Small models that each break one DPU limit (issue 11, done-when 3), with their example inputs."""

from __future__ import annotations

import torch
from torch import nn


class Conv9x9(nn.Module):
    """A 9x9 convolution over 512 channels: the kernel fits every conv engine (1-16), its weights not every bank."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(512, 16, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Pool9x9(nn.Module):
    """A 9x9 max pooling: the ALUs take 1-256, DPUCAHX8H's pool engine 1-8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(9, stride=1, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


class Conv17x17(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 17)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Stride16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=16, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Leaky(nn.Module):
    """conv -> LeakyReLU(slope): the DPU's leaky-relu has slope 26/256 only."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class HardSwish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class EltwiseMul(nn.Module):
    """Two convolutions multiplied, then a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) * self.b(x))


class Reshape5d(nn.Module):
    """A channel shuffle through a 5-D tensor between two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


def limit_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "conv9x9": (Conv9x9(), torch.randn(1, 512, 12, 12)),
        "pool9x9": (Pool9x9(), torch.randn(1, 3, 16, 16)),
        "conv17x17": (Conv17x17(), torch.randn(1, 3, 40, 40)),
        "stride16": (Stride16(), torch.randn(1, 3, 64, 64)),
        "leaky_0.2": (Leaky(0.2), torch.randn(1, 3, 8, 8)),
        "leaky_26/256": (Leaky(26 / 256), torch.randn(1, 3, 8, 8)),
        "hardswish": (HardSwish(), torch.randn(1, 3, 8, 8)),
        "mul": (EltwiseMul(), torch.randn(1, 3, 8, 8)),
        "reshape5d": (Reshape5d(), torch.randn(1, 3, 8, 8)),
    }

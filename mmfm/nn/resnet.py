"""A small ResNet (He et al. 2016): the CNN image tower SimCLR's paper trains, scaled down. A 3x3 stem
(no max-pool: CIFAR-sized images, as the SimCLR paper's CIFAR variant), stages of two BasicBlocks, the
first block of each later stage halving the resolution, global average pooling, and a linear map to
`output_dim`. images (B, 3, H, W) -> ResNetOutput(pooled (B, output_dim), tokens (B, C, h, w))."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ResNetOutput(NamedTuple):
    pooled: torch.Tensor
    tokens: torch.Tensor


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128), blocks_per_stage: int = 2, output_dim: int = 128):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, stride=2 if i > 0 and b == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, output_dim)

    def forward(self, x: torch.Tensor) -> ResNetOutput:
        t = self.blocks(self.stem(x))
        return ResNetOutput(self.proj(t.mean((2, 3))), t)


__all__ = ["ResNet", "ResNetOutput", "BasicBlock"]

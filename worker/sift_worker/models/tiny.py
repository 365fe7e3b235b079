"""`tiny`: a four-stage CNN for demos and tests, cheap enough to embed thousands of images/s on CPU.

64 px input, 128-d output: three stride-2 stages take 64 px to 8x8, a last 3x3 stage mixes at
that resolution, then global average pooling. 128 channels is enough for random-init features
to separate images by colour and texture, which is all a demo needs.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import EmbeddingModel, init_cnn

_WIDTHS: tuple[int, ...] = (32, 64, 128, 128)
_STRIDES: tuple[int, ...] = (2, 2, 2, 1)


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn(self.conv(x)))
        return out


class TinyCNN(EmbeddingModel):
    name = "tiny"
    input_size = 64
    embedding_dim = _WIDTHS[-1]

    def __init__(self) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = 3
        for width, stride in zip(_WIDTHS, _STRIDES, strict=True):
            stages.append(ConvBNReLU(in_channels, width, stride))
            in_channels = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pool(self.features(x))
        return out.flatten(1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_cnn(self, generator)

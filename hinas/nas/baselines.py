"""Hand-designed networks the found ones are compared with."""

from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., TIP 2017): ``depth`` 3x3 convolutions, conv+BN+ReLU in the middle, residual output.

    With the defaults (17 layers, 64 channels, gray) it has 556,096 parameters,
    the 0.56 M of the paper; it predicts the noise and returns ``x - noise``. ``task``, ``scale`` and
    ``in_channels`` are what evaluation and restoring read from any hinas model.
    """

    task = "denoise"
    scale = 1

    def __init__(self, in_channels: int = 1, depth: int = 17, channels: int = 64) -> None:
        super().__init__()
        self.in_channels, self.depth, self.channels = in_channels, depth, channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)

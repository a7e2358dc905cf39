"""Fixed parts shared by the search supernet and the derived network: stem, scalers, decoder, residual head.

Layouts follow docs/HINAS.md ("The final network layer by layer"); the parameter
counts of the authors' networks are checked against them in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hinas.nas.ops import act, act_conv_bn, conv2d
from hinas.nas.resize import imresize

STEM_CHANNELS = 64
DECODER_CHANNELS = 128
ENDPOINT_CHANNELS = 48
ASPP_RATES = (2, 4, 6)


def conv_bn_act(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), act())


def scaler(c_in: int, c_out: int) -> nn.Sequential:
    """Brings a feature to a cell's width: act, 1x1 conv, BN."""
    return act_conv_bn(c_in, c_out, 1)


def sep_block(c_in: int, c_out: int, rate: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (dilation ``rate``) + BN + act, then 1x1 conv + BN + act."""
    return nn.Sequential(
        conv2d(c_in, c_in, 3, dilation=rate, groups=c_in),
        nn.BatchNorm2d(c_in),
        act(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        act(),
    )


class Stem(nn.Module):
    """Two 3x3 convolutions; returns (h1, h0), the features two and one steps before layer 1."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.stem1 = conv_bn_act(in_channels, STEM_CHANNELS, 3)
        self.stem2 = act_conv_bn(STEM_CHANNELS, STEM_CHANNELS, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = self.stem1(x)
        return h1, self.stem2(h1)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling without image pooling, as the SR decoder uses it."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        c = DECODER_CHANNELS
        self.branches = nn.ModuleList([conv_bn_act(c_in, c, 1)] + [sep_block(c_in, c, r) for r in ASPP_RATES])
        self.fuse = conv_bn_act(c * (1 + len(ASPP_RATES)), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """DeepLabv3+-style decoder with the residual reconstruction of HiNAS.

    ``feature_channels`` lists the widths of the last layer's outputs: one entry
    for a derived network, one per final width level for the search supernet
    (their 128-channel projections are summed). ``x0`` is the endpoint feature.
    """

    def __init__(self, feature_channels: list[int], endpoint_channels: int, in_channels: int, task: str, scale: int) -> None:
        super().__init__()
        c = DECODER_CHANNELS
        make_pre = ASPP if task == "sr" else (lambda ch: conv_bn_act(ch, c, 1))
        self.pre = nn.ModuleList([make_pre(ch) for ch in feature_channels])
        self.act = act()
        self.proj = conv_bn_act(endpoint_channels, ENDPOINT_CHANNELS, 1)
        self.fuse = nn.Sequential(sep_block(ENDPOINT_CHANNELS + c, c), sep_block(c, c))
        self.head = nn.Conv2d(c, in_channels * scale * scale, 3, padding=1)
        self.task, self.scale = task, scale

    def forward(self, image: torch.Tensor, features: list[torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
        pre = sum(p(self.act(f)) for p, f in zip(self.pre, features))
        residual = self.head(self.fuse(torch.cat([self.proj(x0), pre], dim=1)))
        with torch.autocast(image.device.type, enabled=False):  # the reconstruction stays float32 under mixed precision
            residual = residual.float()
            if self.task == "sr":
                return imresize(image.float(), self.scale) + F.pixel_shuffle(residual, self.scale)
            return image.float() - residual

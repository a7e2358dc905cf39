"""Folding trained layers into plain convolutions for inference.

In eval mode a BatchNorm is an affine map per channel, so ``BN(conv(x))`` is one
convolution with scaled weights and a bias; a depthwise convolution followed by a
pointwise one is one dense convolution with ``W[o, i] = P[o, i] * D[i]``. Folding is
done in float64 and rounded once, so the folded layers agree with the trained ones
to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Affine = tuple[torch.Tensor, torch.Tensor]
"""(weight, bias) of a convolution, in float64 while being folded."""


def conv_affine(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> Affine:
    """Weight and bias of ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    if bn is None:
        return w, b
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    shift = -bn.running_mean.double() * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight.detach().double(), shift * bn.weight.detach().double() + bn.bias.detach().double()
    return w * scale[:, None, None, None], b * scale + shift


def compose_separable(depthwise: Affine, pointwise: Affine) -> Affine:
    """The dense convolution equal to a depthwise convolution followed by a 1x1 one."""
    (dw, db), (pw, pb) = depthwise, pointwise
    p = pw[:, :, 0, 0]
    return p[:, :, None, None] * dw[:, 0][None], pb + p @ db


def compose_pointwise(first: "FusedConv", pointwise: "FusedConv") -> Affine:
    """The convolution equal to ``first`` (no activation) followed by a 1x1 convolution."""
    if first.act is not None or first.groups != 1 or pointwise.weight.shape[-1] != 1 or pointwise.groups != 1:
        raise ValueError("compose_pointwise needs a plain convolution followed by a 1x1 convolution")
    p = pointwise.weight.double()[:, :, 0, 0]
    w = torch.einsum("oc,cikl->oikl", p, first.weight.double())
    return w, pointwise.bias.double() + p @ first.bias.double()


class FusedConv(nn.Module):
    """A convolution with its BatchNorm folded in, optionally followed by LeakyReLU computed in place.

    Weights are buffers, not parameters: the inference form holds no autograd state.
    ``act`` is the negative slope of the activation after the convolution (0 is ReLU, None is none).
    """

    def __init__(self, affine: Affine, *, dilation: int = 1, groups: int = 1, act: float | None = None) -> None:
        super().__init__()
        weight, bias = affine
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.dilation, self.groups, self.act = dilation, groups, act
        self.padding = dilation * (weight.shape[-1] - 1) // 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation, groups=self.groups)
        return y if self.act is None else F.leaky_relu_(y, self.act)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i * self.groups}->{o}, k={k}, dilation={self.dilation}, groups={self.groups}, act={self.act}"


def activation_slope(module: nn.Module) -> float | None:
    """Negative slope of a (Leaky)ReLU module, None for anything else."""
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return 0.0
    return None


class PreAct(nn.Module):
    """A LeakyReLU that starts a pre-activation block; out of place, since its input is usually used again."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


def fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Fold every ``conv [BN] [act]`` run of a Sequential into one :class:`FusedConv`.

    Activations not preceded by a convolution stay (as :class:`PreAct`). A
    depthwise convolution directly followed by a 1x1 convolution is kept as two
    convolutions: composing them would multiply the arithmetic (see
    :func:`compose_separable` for where that pays).
    """
    mods = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d) else None
            j = i + 1 + (bn is not None)
            slope = activation_slope(mods[j]) if j < len(mods) else None
            j += slope is not None
            if m.stride != (1, 1) or m.padding_mode != "zeros" or m.padding != (m.dilation[0] * (m.kernel_size[0] - 1) // 2,) * 2:
                raise ValueError(f"cannot fold {m}: only stride-1 'same' convolutions are supported")
            out.append(FusedConv(conv_affine(m, bn), dilation=m.dilation[0], groups=m.groups, act=slope))
            i = j
        elif activation_slope(m) is not None:
            out.append(PreAct(activation_slope(m)))
            i += 1
        elif isinstance(m, nn.Identity):
            i += 1
        else:
            raise ValueError(f"cannot fold {type(m).__name__} in a Sequential")
    return nn.Sequential(*out)


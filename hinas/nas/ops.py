"""Candidate operations of a HiNAS cell, kept in a registry users can extend.

Every operation maps ``C`` channels to ``C`` channels at stride 1 (HiNAS never
down-samples). Parametric operations are pre-activation: LeakyReLU(0.2), conv,
BatchNorm. BatchNorm is ``affine=False`` while searching, so that the mixing
weights alone scale an operation, and affine in the derived network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hinas.errors import ConfigError
from hinas.hardware import dilated_conv_operands

NEGATIVE_SLOPE = 0.2

OpFactory = Callable[[int, bool], nn.Module]
"""Builds an operation from ``(channels, affine)``."""


@dataclass(frozen=True)
class Stacking:
    """The shape of a built-in op, which lets the fused supernet run it for all edges leaving a state at once.

    ``conv``: act, one k x k conv (dilation d), BN; ``sep``: (act, depthwise k x k,
    pointwise, BN) twice; ``identity``: the input itself. Ops without a stacking
    (user-registered ones) run edge by edge, as built.
    """

    kind: Literal["conv", "sep", "identity"]
    kernel: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class OpDef:
    name: str
    build: OpFactory
    is_zero: bool = False
    """The zero op is never computed and never chosen when deriving a genotype."""
    stacking: Stacking | None = None
    """Set only where ``build`` makes exactly that layout (the fused supernet copies weights by it)."""


_REGISTRY: dict[str, OpDef] = {}


def act() -> nn.Module:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


class DilatedConv2d(nn.Conv2d):
    """A dilated ``nn.Conv2d`` that computes NCHW when in bf16 on a CPU with gradients to follow: there oneDNN's
    channels_last backward gives wrong weight gradients (:func:`hinas.hardware.dilated_conv_operands`).
    The same parameters and state dict as ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(*dilated_conv_operands(x, self.weight), self.bias)


def conv2d(c_in: int, c_out: int, kernel: int, *, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """A same-padded convolution without bias; a :class:`DilatedConv2d` when ``dilation`` > 1."""
    kind = DilatedConv2d if dilation > 1 else nn.Conv2d
    return kind(c_in, c_out, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=groups, bias=False)


def act_conv_bn(c_in: int, c_out: int, kernel: int, *, dilation: int = 1, affine: bool = True) -> nn.Sequential:
    """Pre-activation convolution: LeakyReLU, conv (same padding, no bias), BatchNorm."""
    return nn.Sequential(
        act(),
        conv2d(c_in, c_out, kernel, dilation=dilation),
        nn.BatchNorm2d(c_out, affine=affine),
    )


def sep_conv(c: int, kernel: int, *, affine: bool = True) -> nn.Sequential:
    """Separable convolution applied twice, as in DARTS: (act, depthwise, pointwise, BN) x 2."""
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [
            act(),
            nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=affine),
        ]
    return nn.Sequential(*layers)


class Zero(nn.Module):
    """The 'no connection' op; present so that a derived cell could be built with it for tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def register_op(
    name: str, build: OpFactory, *, is_zero: bool = False, overwrite: bool = False, stacking: Stacking | None = None
) -> OpDef:
    """Add an operation to the registry so search spaces and genotypes can name it.

    ``build(channels, affine)`` must return a module that keeps both the channel
    count and the spatial size of its input.
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"operation name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"operation {name!r} is already registered; pass overwrite=True to replace it")
    op = OpDef(name, build, is_zero, stacking)
    _REGISTRY[name] = op
    return op


def unregister_op(name: str) -> None:
    _REGISTRY.pop(name, None)


def op_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown operation {name!r}; registered operations: {', '.join(_REGISTRY)}") from None


def build_op(name: str, channels: int, *, affine: bool) -> nn.Module:
    return get_op(name).build(channels, affine)


register_op("conv_3x3", lambda c, affine: act_conv_bn(c, c, 3, affine=affine), stacking=Stacking("conv", 3))
register_op("sep_conv_3x3", lambda c, affine: sep_conv(c, 3, affine=affine), stacking=Stacking("sep", 3))
register_op("sep_conv_5x5", lambda c, affine: sep_conv(c, 5, affine=affine), stacking=Stacking("sep", 5))
register_op("dil_conv_3x3", lambda c, affine: act_conv_bn(c, c, 3, dilation=2, affine=affine), stacking=Stacking("conv", 3, 2))
register_op("dil_conv_5x5", lambda c, affine: act_conv_bn(c, c, 5, dilation=2, affine=affine), stacking=Stacking("conv", 5, 2))
register_op("identity", lambda c, affine: nn.Identity(), stacking=Stacking("identity"))
register_op("zero", lambda c, affine: Zero(), is_zero=True)

HINAS_OPS: tuple[str, ...] = op_names()
"""The seven operations of the paper, in a fixed order (alpha columns follow it)."""

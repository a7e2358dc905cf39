"""Whole images through a network in overlapping tiles, so memory is bounded by the tile, not the image.

Every output is checked before it is used: a model that returns another shape or
dtype, or NaN or infinite values, stops the run with :class:`ModelError` instead
of producing a black image or a NaN score.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from hinas.errors import ConfigError, ModelError

FORWARD_BUDGET = 2 << 30
"""Bytes a whole-image forward pass may take, as :func:`forward_bytes` estimates it; larger images go in tiles."""
MIN_TILE = 64

log = logging.getLogger(__name__)


def forward_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """A generous estimate of the peak memory of ``model(x)``: twelve float32 features as wide as its widest convolution.

    Made from the weights alone (any module whose convolution kernels are 4-D parameters
    or buffers); a module without any counts as 16 channels wide. Measured on the CPU
    for the paper's denoising network (F=20, 384 x 384): 838 MiB, estimated 1080 MiB;
    for its SR network (F=16, x2, 192 x 192): 255 MiB, estimated 864 MiB.
    """
    widest = max((max(t.shape[:2]) for t in (*model.parameters(), *model.buffers()) if t.ndim == 4), default=16)
    return 4 * 12 * widest * x.shape[0] * x.shape[-2] * x.shape[-1]


def auto_tile(model: nn.Module, x: torch.Tensor, overlap: int) -> tuple[int, int]:
    """(tile, overlap) for an image asked to be restored whole: (0, overlap) while it fits ``FORWARD_BUDGET``.

    A larger image is cut into the largest square tiles that fit (a multiple of 8, at
    least ``MIN_TILE``), with the overlap capped at a quarter of the tile.
    """
    need = forward_bytes(model, x)
    if need <= FORWARD_BUDGET:
        return 0, overlap
    per_pixel = need / (x.shape[-2] * x.shape[-1])
    tile = max(MIN_TILE, math.isqrt(int(FORWARD_BUDGET / per_pixel)) // 8 * 8)
    log.warning("a %dx%d image would take about %.1f GiB restored whole; restoring it in %dx%d tiles (within %.0f GiB; "
                "--tile or the tile setting chooses another size)", x.shape[-2], x.shape[-1], need / 2**30, tile, tile,
                FORWARD_BUDGET / 2**30)
    return tile, min(overlap, tile // 4)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


def checked(y: object, x: torch.Tensor, scale: int) -> torch.Tensor:
    """``y``, the model's output for ``x``, when it is a finite float tensor of the right shape; else :class:`ModelError`."""
    if not isinstance(y, torch.Tensor):
        raise ModelError(f"the model returned {type(y).__name__}, not a tensor")
    want = (*x.shape[:2], x.shape[-2] * scale, x.shape[-1] * scale)
    if tuple(y.shape) != want:
        raise ModelError(f"the model returned shape {tuple(y.shape)} for an input of shape {tuple(x.shape)}; expected {want}")
    if y.dtype != x.dtype and y.dtype not in (torch.float16, torch.bfloat16):
        raise ModelError(f"the model returned {y.dtype}; expected {x.dtype} like its input "
                         "(or float16/bfloat16 under mixed precision)")
    if not torch.isfinite(y).all():
        raise ModelError("the model returned NaN or infinite values; "
                         "the network is broken (diverged training or damaged weights)")
    return y


def check_tiling(tile: int, overlap: int, where: str = "") -> None:
    """The one rule for tile settings: neither negative, and the overlap smaller than a tile (0: no tiling)."""
    if tile < 0 or overlap < 0:
        raise ConfigError(f"{where}tile ({tile}) and tile_overlap ({overlap}) must not be negative; tile 0 restores whole images")
    if tile and overlap >= tile:
        raise ConfigError(f"{where}tile_overlap ({overlap}) must be smaller than tile ({tile})")


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, scale: int = 1, tile: int = 0, overlap: int = 16) -> torch.Tensor:
    """Run ``model`` on a (N, C, H, W) batch, in overlapping tiles of side ``tile`` when that is > 0.

    ``tile`` 0 runs the image whole while :func:`forward_bytes` keeps within
    ``FORWARD_BUDGET``, and in tiles chosen by :func:`auto_tile` beyond. Overlaps are
    averaged, so memory is bounded by the tile size while borders between tiles
    stay seamless. Every output is :func:`checked`.
    """
    h, w = x.shape[-2:]
    if tile <= 0:
        tile, overlap = auto_tile(model, x, overlap)
    if tile <= 0 or (h <= tile and w <= tile):
        return checked(model(x), x, scale)
    check_tiling(tile, overlap)
    stride = tile - overlap
    out = weight = None
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            part = x[..., top : top + tile, left : left + tile]
            y = checked(model(part), part, scale)
            if out is None:
                out = y.new_zeros(*y.shape[:2], h * scale, w * scale)
                weight = y.new_zeros(1, 1, h * scale, w * scale)
            region = (..., slice(top * scale, top * scale + y.shape[-2]), slice(left * scale, left * scale + y.shape[-1]))
            out[region] += y
            weight[region] += 1
    return out / weight

"""Whole images through a network in overlapping tiles, so memory is bounded by the tile, not the image."""

from __future__ import annotations

import torch
from torch import nn

from hinas.errors import ConfigError


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


@torch.no_grad()
def tiled_forward(model: nn.Module, x: torch.Tensor, scale: int = 1, tile: int = 0, overlap: int = 16) -> torch.Tensor:
    """Run ``model`` on a (N, C, H, W) batch, in overlapping tiles of side ``tile`` when that is > 0.

    Overlaps are averaged, so memory is bounded by the tile size while borders
    between tiles stay seamless.
    """
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    if overlap >= tile:
        raise ConfigError(f"tile_overlap ({overlap}) must be smaller than tile ({tile})")
    stride = tile - overlap
    out = weight = None
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            y = model(x[..., top : top + tile, left : left + tile])
            if out is None:
                out = y.new_zeros(*y.shape[:2], h * scale, w * scale)
                weight = y.new_zeros(1, 1, h * scale, w * scale)
            region = (..., slice(top * scale, top * scale + y.shape[-2]), slice(left * scale, left * scale + y.shape[-1]))
            out[region] += y
            weight[region] += 1
    return out / weight

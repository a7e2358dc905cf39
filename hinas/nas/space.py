"""The HiNAS search space: a cell DAG (inner space) inside a layers x widths trellis (outer space).

A ``SearchSpace`` is plain, frozen, serialisable data. The supernet, the
genotype and the derived network all read their structure from it, so a
genotype file carries the exact space it was searched in.

The order of a cell's states, the one convention every module shares: a cell is *called* as
``cell(s0, s1)``, s0 being the previous layer's output and s1 the one before (the paper's names),
but *inside* it the states are numbered oldest first, ``[s1, s0, node0, node1, ...]``. So state 0 is
s1, state 1 is s0 and node i is state i + 2; genotype files use these numbers (as the authors' do),
and ``("conv_3x3", 1)`` reads s0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal, get_type_hints

import torch

from hinas import config
from hinas.errors import ConfigError
from hinas.nas.ops import HINAS_OPS, get_op

Task = Literal["denoise", "sr"]
Sharing = Literal["lwas", "tied", "independent"]
CellEval = Literal["shared", "per_transition"]

SR_SCALES = (2, 3, 4, 8)
MAX_CHANNELS = 4096
"""Widest node a space may ask for: far beyond HiNAS's (40), small enough that a hostile file cannot request terabytes."""
MOVES = (-1, 0, 1)
"""Router moves between consecutive layers: narrower, same, wider (the columns of beta)."""


@dataclass(frozen=True)
class SearchSpace:
    """Structure of a HiNAS supernet and of every network derived from it.

    sharing: ``lwas`` one alpha per layer shared by its widths (the paper);
    ``tied`` one alpha for the whole net (CVPR version); ``independent`` one
    alpha per (layer, width level).
    cell_eval: ``shared`` sums the beta-weighted router outputs and evaluates
    one cell per (layer, level) (HiNAS); ``per_transition`` evaluates the cell
    once per incoming transition (Auto-DeepLab), kept for the memory ablation.
    """

    task: Task = "denoise"
    in_channels: int = 1
    scale: int = 1
    layers: int = 3
    nodes: int = 4
    filters: int = 10
    widths: tuple[float, ...] = (1.0, 1.5, 2.0)
    ops: tuple[str, ...] = HINAS_OPS
    sharing: Sharing = "lwas"
    cell_eval: CellEval = "shared"

    def __post_init__(self) -> None:
        for name in ("task", "sharing", "cell_eval", "in_channels", "scale", "layers", "nodes", "filters", "widths", "ops"):
            config.coerce(getattr(self, name), _HINTS[name], f"space.{name}")
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.in_channels not in (1, 3):
            raise ConfigError(f"space.in_channels: {self.in_channels} is not valid; choose 1 (gray) or 3 (RGB)")
        if self.task == "sr" and self.scale not in SR_SCALES:
            raise ConfigError(f"space.scale: {self.scale} is not valid for sr; choose one of {SR_SCALES}")
        if self.task == "denoise" and self.scale != 1:
            raise ConfigError(f"space.scale: denoising keeps the image size, so scale must be 1, got {self.scale}")
        for name in ("layers", "nodes", "filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"space.{name}: must be at least 1, got {getattr(self, name)}")
        if not self.widths or self.widths[0] != 1.0:
            raise ConfigError(f"space.widths: the first width factor must be 1 (the stem's level), got {list(self.widths)}")
        if any(b <= a for a, b in zip(self.widths, self.widths[1:])):
            raise ConfigError(f"space.widths: width factors must increase strictly, got {list(self.widths)}")
        if self.filters > MAX_CHANNELS or self.filters * self.widths[-1] > MAX_CHANNELS:
            raise ConfigError(f"space.filters: {self.filters} x width {self.widths[-1]:g} "
                              f"exceeds {MAX_CHANNELS} channels per node")
        if any(int(self.filters * w) < 1 for w in self.widths):
            raise ConfigError("space.filters: every width level needs at least one channel")
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"space.ops: operations must be distinct, got {list(self.ops)}")
        for name in self.ops:
            get_op(name)
        if not any(not get_op(n).is_zero for n in self.ops):
            raise ConfigError("space.ops: at least one operation other than 'zero' is needed")

    # --- structure derived from the spec ---------------------------------------------------

    @property
    def levels(self) -> int:
        """K, the number of width levels."""
        return len(self.widths)

    def channels(self, level: int, filters: int | None = None) -> int:
        """Channels C of a cell's nodes at ``level`` (a cell outputs ``nodes * C``)."""
        return int((filters or self.filters) * self.widths[level])

    def layer_levels(self, layer: int) -> range:
        """Levels present at ``layer`` (0 is the stem, at level 0; layer l has 0..min(K-1, l))."""
        return range(min(self.levels - 1, layer) + 1)

    def legal_moves(self, layer: int) -> list[tuple[int, int]]:
        """(source level, move index) of every router leaving ``layer`` (0 = stem) for layer + 1."""
        return [(j, m) for j in self.layer_levels(layer) for m, mv in enumerate(MOVES) if 0 <= j + mv < self.levels]

    def move_mask(self) -> torch.Tensor:
        """Boolean (layers, levels, moves): which entries of beta are legal moves."""
        mask = torch.zeros(self.layers, self.levels, len(MOVES), dtype=torch.bool)
        for layer in range(self.layers):
            for j, m in self.legal_moves(layer):
                mask[layer, j, m] = True
        return mask

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(node, input state) of every edge of a cell, in the state order the module docstring explains."""
        return tuple((i, j) for i in range(self.nodes) for j in range(2 + i))

    def edge_index(self, node: int, state: int) -> int:
        return node * 2 + node * (node - 1) // 2 + state

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        return config.from_dict(cls, data, "space")

    def replace(self, **changes: Any) -> SearchSpace:
        return replace(self, **changes)


_HINTS = get_type_hints(SearchSpace)

PRESETS: dict[str, SearchSpace] = {
    # The authors' released search configs (docs/HINAS.md, "Search protocol").
    "paper-denoise": SearchSpace(task="denoise", in_channels=1, layers=3, nodes=4, filters=10),
    "paper-sr": SearchSpace(task="sr", in_channels=3, scale=4, layers=2, nodes=3, filters=8),
}


def preset(name: str) -> SearchSpace:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown search-space preset {name!r}; choose one of {', '.join(PRESETS)}") from None

"""Search cells: the mixed-edge DAG of the inner search space, and the plain reference form of it.

A search cell maps (s0, s1, alpha weights (edges, ops)) to its B nodes
concatenated. Two implementations compute the same mathematics: the reference
cell below, one module per (edge, op), written to be obviously right; and the
stacked cell (:mod:`hinas.nas.supercell`), the fast default. States are ordered
as :mod:`hinas.nas.space` explains. Both expose their state in the reference
layout, which is how tests and tools move weights between them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hinas.nas.ops import build_op, get_op
from hinas.nas.space import SearchSpace


class SearchCell(nn.Module):
    """What every supernet cell implementation provides; the supernet calls one per (layer, level)."""

    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__()
        self.space, self.channels = space, channels

    def reference_state(self, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The cell's state dict, or tensors keyed like it (e.g. gradients), under the reference cell's keys."""
        raise NotImplementedError

    def load_reference_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a reference cell's state dict."""
        raise NotImplementedError


class MixedEdge(nn.Module):
    """sum_o w[o] * op_o(x) over the space's operations; the zero op is never computed."""

    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(build_op(name, channels, affine=False) for name in space.ops)
        self.computed = [o for o, name in enumerate(space.ops) if not get_op(name).is_zero]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(weights[o] * self.ops[o](x) for o in self.computed)


class ReferenceCell(SearchCell):
    """One module per (edge, op), evaluated one by one: slow, and the definition the fused cell is tested against."""

    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__(space, channels)
        self.edges = nn.ModuleList(MixedEdge(space, channels) for _ in space.edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [s1, s0]
        for node in range(self.space.nodes):
            e0 = self.space.edge_index(node, 0)
            states.append(sum(self.edges[e0 + j](h, weights[e0 + j]) for j, h in enumerate(states)))
        return torch.cat(states[2:], dim=1)

    def reference_state(self, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return dict(self.state_dict() if tensors is None else tensors)

    def load_reference_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

"""The HiNAS search supernet: mixed-edge cells on a layers x widths trellis, joined by beta-weighted routers.

Trellis: the stem is layer 0 at level 0; layer l has cells at levels
0..min(K-1, l). Every cell (and the stem) owns a router per legal move
(narrower, same, wider): a 1x1 conv + BN to the target width. A cell's inputs:

- s0, the beta-weighted sum of the router outputs arriving at its level
  (``shared``: one cell evaluation per (layer, level)), or each router output
  separately (``per_transition``: one evaluation per arrival, then the
  beta-weighted sum of the cell outputs, as Auto-DeepLab);
- s1, the previous layer's s0 at the nearest level present (layer 1: the first
  stem feature), brought to this width by a 1x1 scaler, the supernet's
  counterpart of the derived network's feature from two layers back.

Betas are softmaxed per source over its legal moves; impossible moves are
masked out and receive no gradient. The decoder sums projections of every
final-width output and ends in the same residual head as the derived network.
"""

from __future__ import annotations

import torch
from torch import nn

from .genotype import Genotype, derive
from .layers import STEM_CHANNELS, Decoder, Stem, scaler
from .ops import build_op, get_op
from .space import MOVES, SearchSpace


class MixedEdge(nn.Module):
    """sum_o w[o] * op_o(x) over the space's operations; the zero op is never computed."""

    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(build_op(name, channels, affine=False) for name in space.ops)
        self.computed = [o for o, name in enumerate(space.ops) if not get_op(name).is_zero]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(weights[o] * self.ops[o](x) for o in self.computed)


class SearchCell(nn.Module):
    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__()
        self.space = space
        self.edges = nn.ModuleList(MixedEdge(space, channels) for _ in space.edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [s1, s0]
        for node in range(self.space.nodes):
            e0 = self.space.edge_index(node, 0)
            states.append(sum(self.edges[e0 + j](h, weights[e0 + j]) for j, h in enumerate(states)))
        return torch.cat(states[2:], dim=1)


def transition_probs(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-source softmax over legal moves; illegal moves (and absent sources) get probability 0 and no gradient."""
    logits = beta.masked_fill(~mask, float("-inf")).masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return logits.softmax(dim=-1) * mask


def router(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv + BN, no activation: maps a cell's output to a neighbouring width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        b, f, k_levels = space.nodes, space.filters, space.levels
        self.stem = Stem(space.in_channels)
        self.reduce = nn.Sequential(nn.Conv2d(STEM_CHANNELS, f * b, 3, padding=1, bias=False), nn.BatchNorm2d(f * b, affine=False))

        self.routers = nn.ModuleList()
        self.scalers = nn.ModuleList()
        self.cells = nn.ModuleList()
        for layer in range(space.layers):  # sources at `layer`, cells at `layer + 1`
            moves = space.legal_moves(layer)
            self.routers.append(nn.ModuleDict({f"{j}_{m}": router(self._out_width(layer, j), space.channels(j + MOVES[m])) for j, m in moves}))
            top = space.layer_levels(layer)[-1]
            levels = space.layer_levels(layer + 1)
            s1_width = {k: STEM_CHANNELS if layer == 0 else space.channels(min(k, top)) for k in levels}
            self.scalers.append(nn.ModuleDict({str(k): scaler(s1_width[k], space.channels(k)) for k in levels}))
            self.cells.append(nn.ModuleDict({str(k): SearchCell(space, space.channels(k)) for k in levels}))
        self.register_buffer("beta_mask", space.move_mask(), persistent=False)
        final = space.layer_levels(space.layers)
        self.decoder = Decoder([self._out_width(space.layers, k) for k in final], f * b, space.in_channels, space.task, space.scale)

        alpha_shape = {
            "lwas": (space.layers, 1),
            "tied": (1, 1),
            "independent": (space.layers, k_levels),
        }[space.sharing]
        # Equal initial weights: every operation and every move starts equally likely.
        self.alpha = nn.Parameter(torch.zeros(*alpha_shape, space.num_edges, len(space.ops)))
        self.beta = nn.Parameter(torch.zeros(space.layers, k_levels, len(MOVES)))

    def _out_width(self, layer: int, level: int) -> int:
        """Channels a (layer, level) position outputs: the stem's 64, else a cell's nodes * C."""
        return STEM_CHANNELS if layer == 0 else self.space.nodes * self.space.channels(level)

    # --- parameter groups --------------------------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # --- architecture weights ----------------------------------------------------------------

    def alpha_probs(self) -> torch.Tensor:
        return self.alpha.softmax(dim=-1)

    def beta_probs(self) -> torch.Tensor:
        return transition_probs(self.beta, self.beta_mask)

    def cell_weights(self, alpha_probs: torch.Tensor, layer: int, level: int) -> torch.Tensor:
        """Alpha (edges, ops) governing the cell at 0-based ``layer`` and ``level`` under the sharing mode."""
        la, ka = alpha_probs.shape[:2]
        return alpha_probs[layer if la > 1 else 0, level if ka > 1 else 0]

    def genotype(self, meta: dict | None = None) -> Genotype:
        return derive(self.space, self.alpha_probs(), self.beta_probs(), meta)

    # --- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alphas, betas = self.alpha_probs(), self.beta_probs()
        shared = self.space.cell_eval == "shared"
        h1, h0 = self.stem(x)
        x0 = self.reduce(h0)
        outs, prev_in = {0: h0}, {0: h1}
        for layer in range(self.space.layers):
            arrivals: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for j, m in self.space.legal_moves(layer):
                routed = self.routers[layer][f"{j}_{m}"](outs[j])
                arrivals.setdefault(j + MOVES[m], []).append((betas[layer, j, m], routed))
            outs, inputs = {}, {}
            for k in sorted(arrivals):
                inputs[k] = sum(p * r for p, r in arrivals[k])
                s1 = self.scalers[layer][str(k)](prev_in[min(k, max(prev_in))])
                cell, w = self.cells[layer][str(k)], self.cell_weights(alphas, layer, k)
                if shared:
                    outs[k] = cell(inputs[k], s1, w)
                else:
                    outs[k] = sum(p * cell(r, s1, w) for p, r in arrivals[k])
            prev_in = inputs
        return self.decoder(x, [outs[k] for k in sorted(outs)], x0)

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

Cells come in two implementations of the same mathematics (``impl``): the
stacked cell (:mod:`hinas.nas.supercell`, the default) and the reference cell
(:mod:`hinas.nas.cells`) it is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hinas.errors import ConfigError
from hinas.nas.cells import ReferenceCell, SearchCell
from hinas.nas.genotype import Genotype, derive
from hinas.nas.layers import STEM_CHANNELS, Decoder, Stem, scaler
from hinas.nas.space import MOVES, SearchSpace
from hinas.nas.supercell import StackedCell

CELLS: dict[str, type[SearchCell]] = {"fused": StackedCell, "reference": ReferenceCell}
"""Cell implementations by name; ``reference`` is the plain one the fused default is tested against."""

__all__ = ["CELLS", "ReferenceCell", "SearchCell", "Supernet", "router", "transition_probs"]


def transition_probs(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-source softmax over legal moves; illegal moves (and absent sources) get probability 0 and no gradient."""
    logits = beta.masked_fill(~mask, float("-inf")).masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return logits.softmax(dim=-1) * mask


def router(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv + BN, no activation: maps a cell's output to a neighbouring width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class Supernet(nn.Module):
    """The search supernet of ``space``.

    impl: the cell implementation (``CELLS``); both give the same initial
    weights for a seed and the same mathematics. checkpoint: recompute each
    cell's activations in the backward pass instead of keeping them (less
    memory, one more cell forward per step).
    """

    def __init__(self, space: SearchSpace, impl: str = "fused", checkpoint: bool = False) -> None:
        super().__init__()
        if impl not in CELLS:
            raise ConfigError(f"supernet impl {impl!r} is not valid; choose one of {', '.join(CELLS)}")
        self.space, self.impl, self.checkpoint = space, impl, checkpoint
        make_cell = CELLS[impl]
        b, f, k_levels = space.nodes, space.filters, space.levels
        self.stem = Stem(space.in_channels)
        self.reduce = nn.Sequential(nn.Conv2d(STEM_CHANNELS, f * b, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(f * b, affine=False))

        self.routers = nn.ModuleList()
        self.scalers = nn.ModuleList()
        self.cells = nn.ModuleList()
        for layer in range(space.layers):  # sources at `layer`, cells at `layer + 1`
            moves = space.legal_moves(layer)
            self.routers.append(nn.ModuleDict({f"{j}_{m}": router(self._out_width(layer, j), space.channels(j + MOVES[m]))
                                               for j, m in moves}))
            top = space.layer_levels(layer)[-1]
            levels = space.layer_levels(layer + 1)
            s1_width = {k: STEM_CHANNELS if layer == 0 else space.channels(min(k, top)) for k in levels}
            self.scalers.append(nn.ModuleDict({str(k): scaler(s1_width[k], space.channels(k)) for k in levels}))
            self.cells.append(nn.ModuleDict({str(k): make_cell(space, space.channels(k)) for k in levels}))
        self.register_buffer("beta_mask", space.move_mask(), persistent=False)
        final = space.layer_levels(space.layers)
        self.decoder = Decoder([self._out_width(space.layers, k) for k in final], f * b, space.in_channels, space.task,
                               space.scale)

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

    # --- the reference layout ---------------------------------------------------------------

    def _cells(self) -> Iterator[tuple[str, SearchCell]]:
        for layer, cells in enumerate(self.cells):
            for level, cell in cells.items():
                yield f"cells.{layer}.{level}.", cell

    def reference_state(self, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The state dict, or tensors keyed like it (e.g. gradients), as a ``reference`` supernet names and shapes them."""
        tensors = self.state_dict() if tensors is None else tensors
        out = {k: v for k, v in tensors.items() if not k.startswith("cells.")}
        for prefix, cell in self._cells():
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            out.update({prefix + k: v for k, v in cell.reference_state(own).items()})
        return out

    def load_reference_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict in the reference layout (what ``reference_state`` returns), whatever ``impl`` is."""
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("cells.")}, strict=False)
        for prefix, cell in self._cells():
            cell.load_reference_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # --- forward -----------------------------------------------------------------------------

    def _cell(self, cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not (self.checkpoint and torch.is_grad_enabled()):
            return cell(s0, s1, w)
        calls = 0

        def run(s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            with _scratch_running_stats(cell) if calls > 1 else contextlib.nullcontext():
                return cell(s0, s1, w)

        return checkpoint(run, s0, s1, w, use_reentrant=False)

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
                    outs[k] = self._cell(cell, inputs[k], s1, w)
                else:
                    outs[k] = sum(p * self._cell(cell, r, s1, w) for p, r in arrivals[k])
            prev_in = inputs
        return self.decoder(x, [outs[k] for k in sorted(outs)], x0)


@contextlib.contextmanager
def _scratch_running_stats(module: nn.Module) -> Iterator[None]:
    """Point BatchNorm running statistics at copies while a checkpoint recomputes, so each forward counts once."""
    kept = [(m, m.running_mean, m.running_var, m.num_batches_tracked)
            for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m, mean, var, count in kept:
        m.running_mean, m.running_var, m.num_batches_tracked = mean.clone(), var.clone(), count.clone()
    try:
        yield
    finally:
        for m, mean, var, count in kept:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count

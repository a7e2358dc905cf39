"""Latency of derived networks from a per-part lookup table, and its expectation over a supernet's alphas and betas.

Why: FLOPs and parameters do not predict speed (dense 64-channel convolutions run near peak on AMX while
depthwise and 10-20-channel ones stay memory-bound), so the search is given the latency measured on the
device it targets (ProxylessNAS/FBNet style). The table is measured by :mod:`hinas.infer.latency_table`;
this module only reads it, so the method stays free of the inference code.

A derived network costs: the fixed parts (stem, the work between the parts), the endpoint projection
(of ``reduce`` or of a level-0 cell), per layer two scalers (input width -> the layer's width) and a cell
(a fixed cost at its level plus one table entry per kept edge), and the decoder (its input width is the last
level's). :func:`expected_latency` is the same sum with every discrete choice replaced by its probability
under the architecture weights, so it equals :func:`network_latency` when alphas and betas are one-hot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hinas.errors import ConfigError
from hinas.nas.genotype import INPUTS_PER_NODE, Genotype, random_genotype
from hinas.nas.layers import STEM_CHANNELS
from hinas.nas.ops import get_op
from hinas.nas.space import MOVES, SearchSpace

SCHEMA = "hinas.latency_table"
SCHEMA_VERSION = 1
FIXED_PARTS = ("stem", "glue", "endpoint_reduce", "endpoint_cell")
"""``glue``: what runs between the parts (activations of cell outputs); ``endpoint_*``: the decoder's 48-channel
projection of ``reduce`` (a 3x3 convolution, folded) or of a level-0 cell's output (1x1)."""


def scaler_key(c_in: int, c_out: int) -> str:
    return f"{c_in}->{c_out}"


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per part of the networks of ``space`` (whose ``filters`` is the deployed F) on one device.

    ``ops[name][level]``: one kept edge running ``name`` at that level; ``cell[level]``: what a cell costs beyond
    its edges (node sums, input activations, its output); ``scalers``: by :func:`scaler_key`; ``decoder[level]``:
    the decoder after a last layer at that level. ``env`` says where and how it was measured (device, CPU,
    precision, torch version, threads, input size); ``calibration`` how per-edge costs were fitted to whole
    networks. Both are checked by the measuring side, never read here.
    """

    space: SearchSpace
    ops: dict[str, tuple[float, ...]]
    cell: tuple[float, ...]
    scalers: dict[str, float]
    decoder: tuple[float, ...]
    fixed: dict[str, float]
    env: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.space.levels
        missing = [op for op in self.space.ops if not get_op(op).is_zero and op not in self.ops]
        if missing:
            raise ConfigError(f"latency table: no entry for operation(s) {', '.join(missing)}")
        if any(len(v) != k for v in (*self.ops.values(), self.cell, self.decoder)):
            raise ConfigError(f"latency table: ops, cell and decoder need one entry per width level ({k})")
        if set(self.fixed) != set(FIXED_PARTS):
            raise ConfigError(f"latency table: fixed parts must be exactly {', '.join(FIXED_PARTS)}")
        absent = sorted(set(scaler_pairs(self.space)) - set(self.scalers))
        if absent:
            raise ConfigError(f"latency table: no entry for scaler(s) {', '.join(absent)}")
        if not all(math.isfinite(v) for v in self._values()):
            raise ConfigError("latency table: every entry must be a finite number of milliseconds")

    def _values(self) -> list[float]:
        return [*(v for row in self.ops.values() for v in row), *self.cell, *self.scalers.values(), *self.decoder,
                *self.fixed.values()]

    def check_space(self, space: SearchSpace) -> None:
        """Refuse a space of another structure (the filter multiplier may differ: the table is for the deployed one)."""
        if space.replace(filters=self.space.filters) != self.space:
            raise ConfigError(f"latency table: measured for space {self.space.to_dict()}, not for {space.to_dict()} "
                              "(filters aside); measure one for this space with `hinas profile`")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "env": self.env, "space": self.space.to_dict(),
                "ops": {k: list(v) for k, v in self.ops.items()}, "cell": list(self.cell), "scalers": self.scalers,
                "decoder": list(self.decoder), "fixed": self.fixed, "calibration": self.calibration}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> LatencyTable:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ConfigError(f"not a latency table (no 'schema': {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(f"latency table schema_version {data.get('schema_version')!r}: this hinas reads "
                              f"version {SCHEMA_VERSION}; measure it again with `hinas profile`")
        try:
            return cls(SearchSpace.from_dict(data["space"]), {k: tuple(map(float, v)) for k, v in data["ops"].items()},
                       tuple(map(float, data["cell"])), {k: float(v) for k, v in data["scalers"].items()},
                       tuple(map(float, data["decoder"])), {k: float(v) for k, v in data["fixed"].items()},
                       dict(data["env"]), dict(data["calibration"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"latency table: malformed ({type(err).__name__}: {err})") from None


def out_width(space: SearchSpace, level: int) -> int:
    """Channels of a cell's output (its nodes concatenated) at ``level``."""
    return space.nodes * space.channels(level)


def scaler_pairs(space: SearchSpace) -> list[str]:
    """Every (input width, output width) a scaler of this space can have: from the stem (64) or any level's cell
    output (the feature two layers back may be two levels away) to any level's width."""
    sources = [STEM_CHANNELS] + [out_width(space, k) for k in range(space.levels)]
    return sorted({scaler_key(c, space.channels(k)) for c in sources for k in range(space.levels)})


def endpoint_is_cell(path: tuple[int, ...]) -> bool:
    """The decoder's endpoint is a cell's output: some layer before the last is at level 0 and the last is not."""
    return path[-1] != 0 and 0 in path[:-1]


def network_latency(table: LatencyTable, genotype: Genotype) -> float:
    """Predicted milliseconds of the network derived from ``genotype`` at the table's F, input size and device."""
    space = genotype.space
    table.check_space(space)
    sp, path = table.space, genotype.path
    total = table.fixed["stem"] + table.fixed["glue"]
    total += table.fixed["endpoint_cell" if endpoint_is_cell(path) else "endpoint_reduce"]
    widths = [STEM_CHANNELS, STEM_CHANNELS]
    for cell, level in zip(genotype.cells, path):
        c = sp.channels(level)
        total += table.scalers[scaler_key(widths[-1], c)] + table.scalers[scaler_key(widths[-2], c)]
        total += table.cell[level] + sum(table.ops[op][level] for node in cell for op, _ in node)
        widths.append(out_width(sp, level))
    return total + table.decoder[path[-1]]


def random_of_latency(table: LatencyTable, target_ms: float, index: int, tolerance: float = 0.1,
                      tries: int = 200_000) -> Genotype:
    """The ``index``-th random genotype (seeds 0, 1, ... of :func:`random_genotype`) whose predicted latency is within
    ``tolerance`` (a fraction) of ``target_ms``: random architectures as fast as a searched one, the baseline a
    latency-aware search must beat at its own latency."""
    found = 0
    for seed in range(tries):
        genotype = random_genotype(table.space, seed)
        if abs(network_latency(table, genotype) / target_ms - 1) <= tolerance:
            if found == index:
                return genotype
            found += 1
    raise ConfigError(f"only {found} of {tries} random genotypes predict {target_ms:g} ms within {tolerance:.0%}; "
                      f"asked for number {index} (a latency this space rarely or never reaches at random)")


def _transitions(space: SearchSpace, beta_probs: torch.Tensor) -> list[torch.Tensor]:
    """Per layer l, the (levels x levels) matrix of P(level at layer l+1 | level at layer l), layer 0 the stem."""
    k = space.levels
    mats = []
    for layer in range(space.layers):
        rows = []
        for j in range(k):
            cols = [beta_probs[layer, j, MOVES.index(t - j)] if t - j in MOVES else beta_probs.new_zeros(())
                    for t in range(k)]
            rows.append(torch.stack(cols))
        mats.append(torch.stack(rows))
    return mats


def _kept(strength: torch.Tensor) -> torch.Tensor:
    """Probability that each of a node's edges is among the two kept, drawing two without replacement with
    probabilities proportional to ``strength`` (Plackett-Luce): 1 for the two strongest of one-hot weights,
    2/n for equal ones, and always summing to 2 over the node's edges."""
    p = strength / strength.sum().clamp_min(1e-12)
    second = (p[None, :] * p[:, None] / (1 - p[:, None]).clamp_min(1e-6))  # [first f, second e]
    second = second - torch.diag(torch.diagonal(second))
    return p + second.sum(0)


def cell_latency(table: LatencyTable, weights: torch.Tensor, level: int) -> torch.Tensor:
    """Expected milliseconds of a derived cell at ``level`` from mixed-edge weights (edges, ops), softmaxed.

    Derivation never keeps the zero op, so each edge's op costs are weighted by its probabilities renormalised
    over the other ops; it keeps two edges per node, ranked by their strongest non-zero op (:func:`_kept`)."""
    space = table.space
    live = [o for o, name in enumerate(space.ops) if not get_op(name).is_zero]
    cost = weights.new_tensor([table.ops[space.ops[o]][level] for o in live])
    w = weights[:, live]
    per_edge = (w / w.sum(-1, keepdim=True).clamp_min(1e-12)) @ cost
    strength = w.max(-1).values
    total = weights.new_tensor(table.cell[level])
    for node in range(space.nodes):
        e0, n = space.edge_index(node, 0), 2 + node
        kept = _kept(strength[e0 : e0 + n]) if n > INPUTS_PER_NODE else torch.ones_like(strength[e0 : e0 + n])
        total = total + (kept * per_edge[e0 : e0 + n]).sum()
    return total


def expected_latency(table: LatencyTable, space: SearchSpace, alpha_probs: torch.Tensor,
                     beta_probs: torch.Tensor) -> torch.Tensor:
    """Expected predicted milliseconds of the derived network, differentiable in alphas and betas.

    ``alpha_probs`` (layers or 1, levels or 1, edges, ops) and ``beta_probs`` (layers, levels, moves) are the
    supernet's softmaxed weights. The width path is a Markov chain from the stem's level 0 through the beta
    transition probabilities (Viterbi's trellis, with sums instead of maxima); each layer's cell, scalers and
    the decoder are weighted by the probabilities of the levels (or pairs of levels) they depend on.
    """
    table.check_space(space)
    sp, k_levels = table.space, space.levels
    mats = _transitions(space, beta_probs.to(alpha_probs.dtype))
    cost_from = alpha_probs.new_tensor([[table.scalers[scaler_key(out_width(sp, j), sp.channels(k))] for k in range(k_levels)]
                                        for j in range(k_levels)])
    cost_stem = alpha_probs.new_tensor([table.scalers[scaler_key(STEM_CHANNELS, sp.channels(k))] for k in range(k_levels)])
    start = alpha_probs.new_zeros(k_levels)
    start[0] = 1.0
    levels = []  # distribution of each layer's level
    p = start
    for m in mats:
        p = p @ m
        levels.append(p)
    la, ka = alpha_probs.shape[:2]
    total = alpha_probs.new_tensor(table.fixed["stem"] + table.fixed["glue"])
    for i, p in enumerate(levels):
        cells = torch.stack([cell_latency(table, alpha_probs[i if la > 1 else 0, k if ka > 1 else 0], k)
                             for k in range(k_levels)])
        total = total + p @ cells
        # s0 reads the previous layer's output, s1 the one before: joint laws of (that layer's level, this one's)
        total = total + (p @ cost_stem if i == 0 else (levels[i - 1][:, None] * mats[i] * cost_from).sum())
        total = total + (p @ cost_stem if i <= 1 else (levels[i - 2][:, None] * (mats[i - 1] @ mats[i]) * cost_from).sum())
    total = total + levels[-1] @ alpha_probs.new_tensor(table.decoder)
    # the endpoint is a cell when the last layer is off level 0 and an earlier one is on it
    off_zero = alpha_probs.new_ones(k_levels)
    off_zero[0] = 0.0
    never = start  # P(level, no layer so far at level 0) over the layers before the last (the stem is no layer)
    for m in mats[:-1]:
        never = (never @ m) * off_zero
    p_cell = (levels[-1] * off_zero).sum() - ((never @ mats[-1]) * off_zero).sum()
    return total + p_cell * table.fixed["endpoint_cell"] + (1 - p_cell) * table.fixed["endpoint_reduce"]

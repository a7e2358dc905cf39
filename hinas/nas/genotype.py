"""Genotypes: what a search found, derived from alphas and betas, stored as versioned JSON.

A genotype holds one cell per layer, the width path through the trellis and
the search space it came from. Cells are derived DARTS-style (per node, the two
incoming edges whose best non-zero operation is strongest); the path is the
Viterbi path through the beta transition probabilities, starting from the
stem's level 0 and moving at most one level per layer.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hinas.errors import ConfigError, GenotypeError
from hinas.files import atomic_write_bytes, read_regular
from hinas.nas.ops import get_op
from hinas.nas.space import MOVES, SearchSpace

SCHEMA = "hinas.genotype"
SCHEMA_VERSION = 1
INPUTS_PER_NODE = 2
MAX_BYTES = 1 << 20
"""Genotype files hold a few kilobytes; a larger file is refused before it is read."""

Node = tuple[tuple[str, int], ...]
"""The (operation, input state) pairs a node sums; states are numbered as :mod:`hinas.nas.space` explains."""
CellGenotype = tuple[Node, ...]


@dataclass(frozen=True)
class Genotype:
    space: SearchSpace
    path: tuple[int, ...]
    cells: tuple[CellGenotype, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """Provenance only (search run, epoch, score); never read when building a network."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", tuple(self.path))
        object.__setattr__(self, "cells", tuple(tuple(tuple((op, j) for op, j in node) for node in cell) for cell in self.cells))
        _check_path(self.space, self.path)
        _check_cells(self.space, self.cells)

    def op_counts(self) -> Counter[str]:
        """How often each operation is used; many ``identity`` ops is the classic sign of collapse."""
        return Counter(op for cell in self.cells for node in cell for op, _ in node)

    # --- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "space": self.space.to_dict(),
            "path": list(self.path),
            "cells": [[[{"op": op, "input": j} for op, j in node] for node in cell] for cell in self.cells],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}")
        allowed = {"schema", "schema_version", "space", "path", "cells", "meta"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise GenotypeError(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed fields: {', '.join(sorted(allowed))}")
        missing = sorted({"schema", "schema_version", "space", "path", "cells"} - set(data))
        if missing:
            raise GenotypeError(f"missing field(s) {', '.join(map(repr, missing))}")
        if data["schema"] != SCHEMA:
            raise GenotypeError(f"schema: {data['schema']!r} is not a hinas genotype; expected {SCHEMA!r}")
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise GenotypeError(f"schema_version: expected a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise GenotypeError(
                f"schema_version: {version} is newer than this hinas reads (up to {SCHEMA_VERSION}); upgrade hinas to load it"
            )
        try:
            space = SearchSpace.from_dict(data["space"])
        except ConfigError as err:
            raise GenotypeError(str(err)) from None
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise GenotypeError(f"meta: expected an object, got {type(meta).__name__}")
        path = _int_list(data["path"], "path")
        cells = _parse_cells(data["cells"])
        return cls(space, tuple(path), cells, meta)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"{source}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        except RecursionError:
            raise GenotypeError(f"{source}: JSON nested too deeply to be a genotype") from None
        try:
            return cls.from_dict(data)
        except GenotypeError as err:
            raise GenotypeError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        data = read_regular(path, "genotype file", GenotypeError, MAX_BYTES)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise GenotypeError(f"{path}: cannot read genotype file ({err})") from None
        return cls.from_json(text, str(path))


# --- validation ---------------------------------------------------------------------------------


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise GenotypeError(f"{where}: expected a list, got {type(value).__name__}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            raise GenotypeError(f"{where}[{i}]: expected an integer, got {v!r}")
    return value


def _parse_cells(value: Any) -> tuple[CellGenotype, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"cells: expected a list of cells, got {type(value).__name__}")
    cells = []
    for c, cell in enumerate(value):
        if not isinstance(cell, list):
            raise GenotypeError(f"cells[{c}]: expected a list of nodes, got {type(cell).__name__}")
        nodes = []
        for n, node in enumerate(cell):
            if not isinstance(node, list):
                raise GenotypeError(f"cells[{c}][{n}]: expected a list of edges, got {type(node).__name__}")
            edges = []
            for e, edge in enumerate(node):
                where = f"cells[{c}][{n}][{e}]"
                if not isinstance(edge, dict) or set(edge) != {"op", "input"}:
                    raise GenotypeError(f"{where}: expected an object with exactly the fields 'op' and 'input', got {edge!r}")
                if not isinstance(edge["op"], str):
                    raise GenotypeError(f"{where}.op: expected an operation name, got {edge['op']!r}")
                if isinstance(edge["input"], bool) or not isinstance(edge["input"], int):
                    raise GenotypeError(f"{where}.input: expected an integer state index, got {edge['input']!r}")
                edges.append((edge["op"], edge["input"]))
            nodes.append(tuple(edges))
        cells.append(tuple(nodes))
    return tuple(cells)


def _check_path(space: SearchSpace, path: tuple[int, ...]) -> None:
    if len(path) != space.layers:
        raise GenotypeError(f"path: expected {space.layers} levels (space.layers), got {len(path)}")
    prev = 0  # the stem sits at level 0
    for i, level in enumerate(path):
        if not 0 <= level < space.levels:
            raise GenotypeError(f"path[{i}]: level {level} does not exist; levels are 0..{space.levels - 1}")
        if abs(level - prev) > 1:
            what = "starts off level 0: the first layer must be at level 0 or 1" if i == 0 else "jumps two levels"
            raise GenotypeError(f"path[{i}]: level {level} after level {prev} {what}; a path moves at most one level per layer")
        prev = level


def _check_cells(space: SearchSpace, cells: tuple[CellGenotype, ...]) -> None:
    if len(cells) != space.layers:
        raise GenotypeError(f"cells: expected one cell per layer ({space.layers}, space.layers), got {len(cells)}")
    allowed = [op for op in space.ops if not get_op(op).is_zero]
    for c, cell in enumerate(cells):
        if len(cell) != space.nodes:
            raise GenotypeError(f"cells[{c}]: expected {space.nodes} nodes (space.nodes), got {len(cell)}")
        for n, node in enumerate(cell):
            if len(node) != INPUTS_PER_NODE:
                raise GenotypeError(f"cells[{c}][{n}]: a node has exactly {INPUTS_PER_NODE} incoming edges, got {len(node)}")
            for e, (op, state) in enumerate(node):
                where = f"cells[{c}][{n}][{e}]"
                if op not in allowed:
                    raise GenotypeError(f"{where}.op: {op!r} is not allowed; choose one of {', '.join(allowed)}")
                if not 0 <= state < 2 + n:
                    raise GenotypeError(
                        f"{where}.input: state {state} is out of range; node {n} reads states 0..{n + 1} "
                        "(0 = s1, 1 = s0, 2.. = earlier nodes)"
                    )


# --- derivation ---------------------------------------------------------------------------------


def derive_cell(space: SearchSpace, weights: torch.Tensor) -> CellGenotype:
    """Top-2 incoming edges per node by their strongest non-zero op; ``weights`` is (edges, ops) softmaxed."""
    w = weights.detach().double().cpu().tolist()
    candidates = [o for o, name in enumerate(space.ops) if not get_op(name).is_zero]
    cell = []
    for node in range(space.nodes):
        scored = []
        for state in range(2 + node):
            row = w[space.edge_index(node, state)]
            best = max(candidates, key=lambda o: row[o])
            scored.append((row[best], state, space.ops[best]))
        top = sorted(scored, key=lambda s: -s[0])[:INPUTS_PER_NODE]
        cell.append(tuple((op, state) for _, state, op in sorted(top, key=lambda s: s[1])))
    return tuple(cell)


def viterbi_path(space: SearchSpace, beta_probs: torch.Tensor) -> tuple[int, ...]:
    """Most probable width path: maximises the product of chosen transition probabilities.

    ``beta_probs[l, j, m]`` is the probability that the cell at layer ``l`` (0 = stem),
    level ``j`` routes to level ``j + MOVES[m]`` of layer ``l + 1``.
    """
    p = beta_probs.detach().double().cpu().tolist()
    score = {0: 0.0}
    back: list[dict[int, int]] = []
    for layer in range(1, space.layers + 1):
        new: dict[int, float] = {}
        choice: dict[int, int] = {}
        for k in space.layer_levels(layer):
            for j, s in score.items():
                move = k - j
                if move not in MOVES or p[layer - 1][j][MOVES.index(move)] <= 0:
                    continue
                cand = s + math.log(p[layer - 1][j][MOVES.index(move)])
                if k not in new or cand > new[k]:
                    new[k], choice[k] = cand, j
        score = new
        back.append(choice)
    level = max(score, key=lambda k: score[k])
    path = [level]
    for choice in reversed(back[1:]):
        level = choice[level]
        path.append(level)
    return tuple(reversed(path))


def derive(space: SearchSpace, alpha_probs: torch.Tensor, beta_probs: torch.Tensor,
           meta: dict[str, Any] | None = None) -> Genotype:
    """Genotype from softmaxed architecture weights.

    ``alpha_probs`` has shape (layers or 1, levels or 1, edges, ops) according to
    the space's sharing mode; each layer's cell comes from the alpha that governs
    the level its path visits.
    """
    if not (torch.isfinite(alpha_probs).all() and torch.isfinite(beta_probs).all()):
        raise GenotypeError("alphas or betas are NaN or infinite: no genotype is derived from a diverged search")
    path = viterbi_path(space, beta_probs)
    la, ka = alpha_probs.shape[:2]
    cells = tuple(derive_cell(space, alpha_probs[layer if la > 1 else 0, k if ka > 1 else 0]) for layer, k in enumerate(path))
    return Genotype(space, path, cells, dict(meta or {}))


def compare(a: Genotype, b: Genotype) -> list[str]:
    """Human-readable differences between two genotypes of the same depth (empty when they agree)."""
    if a.space.layers != b.space.layers or a.space.nodes != b.space.nodes:
        return [f"different shapes: {a.space.layers}x{a.space.nodes} vs {b.space.layers}x{b.space.nodes} (layers x nodes)"]
    out = []
    if a.path != b.path:
        out.append(f"width path: {list(a.path)} vs {list(b.path)}")
    for layer, (ca, cb) in enumerate(zip(a.cells, b.cells), start=1):
        for n, (na, nb) in enumerate(zip(ca, cb)):
            if na != nb:
                fmt = lambda node: " + ".join(f"{op}({s})" for op, s in node)  # noqa: E731
                out.append(f"layer {layer} node {n}: {fmt(na)} vs {fmt(nb)}")
    return out


# --- random architectures -------------------------------------------------------------------------


def legal_paths(space: SearchSpace) -> list[tuple[int, ...]]:
    """Every width path a search could derive: from the stem's level 0, at most one level per layer."""
    paths: list[tuple[int, ...]] = [()]
    for _ in range(space.layers):
        paths = [p + (k,) for p in paths for k in range(space.levels) if abs(k - (p[-1] if p else 0)) <= 1]
    return paths


def random_genotype(space: SearchSpace, seed: int) -> Genotype:
    """A genotype drawn uniformly from ``space``: the baseline a search must beat (random search, Li & Talwalkar 2019).

    The path is uniform over :func:`legal_paths`; each node takes two distinct
    input states, uniform over the pairs it may read, each through a uniform
    non-zero operation, as derivation would keep. The same seed gives the same genotype.
    """
    rng = random.Random(seed)
    ops = [op for op in space.ops if not get_op(op).is_zero]
    path = rng.choice(legal_paths(space))
    cells = tuple(
        tuple(tuple((rng.choice(ops), state) for state in sorted(rng.sample(range(2 + node), INPUTS_PER_NODE)))
              for node in range(space.nodes))
        for _ in range(space.layers)
    )
    return Genotype(space, path, cells, {"source": "random", "seed": seed})

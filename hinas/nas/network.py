"""The network derived from a genotype, laid out as the authors' final networks (docs/HINAS.md).

stem -> L layers (two 1x1 scalers, then the layer's fixed cell at its width)
-> decoder (last cell + an earlier endpoint feature) -> residual reconstruction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hinas.errors import ConfigError, GenotypeError, first_line
from hinas.nas.baselines import DnCNN
from hinas.nas.genotype import CellGenotype, Genotype
from hinas.nas.layers import STEM_CHANNELS, Decoder, Stem, scaler
from hinas.nas.ops import build_op
from hinas.nas.space import MAX_CHANNELS, SearchSpace


class Cell(nn.Module):
    """A fixed cell: each node sums its chosen operations; the output concatenates all nodes."""

    def __init__(self, genotype: CellGenotype, channels: int) -> None:
        super().__init__()
        self.inputs = [[state for _, state in node] for node in genotype]
        self.nodes = nn.ModuleList(nn.ModuleList(build_op(op, channels, affine=True) for op, _ in node) for node in genotype)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [s1, s0]
        for ops, inputs in zip(self.nodes, self.inputs):
            states.append(sum(op(states[j]) for op, j in zip(ops, inputs)))
        return torch.cat(states[2:], dim=1)


class Layer(nn.Module):
    def __init__(self, in0: int, in1: int, genotype: CellGenotype, channels: int) -> None:
        super().__init__()
        self.scale0 = scaler(in0, channels)
        self.scale1 = scaler(in1, channels)
        self.cell = Cell(genotype, channels)

    def forward(self, h0: torch.Tensor, h1: torch.Tensor) -> torch.Tensor:
        return self.cell(self.scale0(h0), self.scale1(h1))


class Network(nn.Module):
    """Derived HiNAS network. ``filters`` overrides the search's filter multiplier (retraining uses more)."""

    def __init__(self, genotype: Genotype, filters: int | None = None) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise GenotypeError(f"Network: genotype must be a Genotype (Genotype.load reads one), got {type(genotype).__name__}")
        space = genotype.space
        if filters is not None:
            widest = max(space.widths)
            if isinstance(filters, bool) or not isinstance(filters, int) or not 1 <= filters * widest <= MAX_CHANNELS:
                raise ConfigError(f"Network: filters must be None (the search's {space.filters}) or a positive integer "
                                  f"within {MAX_CHANNELS} channels at width {widest:g}, got {filters!r}")
        self.genotype = genotype
        self.filters = f = filters or space.filters
        b = space.nodes
        self.stem = Stem(space.in_channels)
        # Always built (the authors' nets count its weights); feeds the decoder only without a better endpoint.
        self.reduce = nn.Sequential(nn.Conv2d(STEM_CHANNELS, f * b, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(f * b, affine=False))
        widths = [STEM_CHANNELS, STEM_CHANNELS]  # output widths of h1, h0 so far
        self.layers = nn.ModuleList()
        for cell, level in zip(genotype.cells, genotype.path):
            c = space.channels(level, f)
            self.layers.append(Layer(widths[-1], widths[-2], cell, c))
            widths.append(b * c)
        at_zero = [i for i, level in enumerate(genotype.path) if level == 0]
        last = len(genotype.path) - 1
        self.endpoint_layer = at_zero[-1] if at_zero and at_zero[-1] != last else None
        self.decoder = Decoder([widths[-1]], f * b, space.in_channels, space.task, space.scale)

    @property
    def space(self) -> SearchSpace:
        return self.genotype.space

    @property
    def task(self) -> str:
        return self.genotype.space.task

    @property
    def scale(self) -> int:
        return self.genotype.space.scale

    @property
    def in_channels(self) -> int:
        return self.genotype.space.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1, h0 = self.stem(x)
        endpoint = None if self.endpoint_layer is not None else self.reduce(h0)
        for i, layer in enumerate(self.layers):
            h1, h0 = h0, layer(h0, h1)
            if i == self.endpoint_layer:
                endpoint = h0
        return self.decoder(x, [h0], endpoint)


def save_model(model: Network | DnCNN, path: str | Path, **extra: Any) -> Path:
    """A self-describing checkpoint (genotype + width + weights, or DnCNN's shape + weights) that loads without executing code."""
    from hinas.files import atomic_torch_save

    path = Path(path)
    if isinstance(model, DnCNN):
        shape = {"in_channels": model.in_channels, "depth": model.depth, "channels": model.channels}
        state = {"format": "hinas.dncnn", **shape, "state_dict": model.state_dict(), **extra}
    else:
        state = {"format": "hinas.network", "genotype": model.genotype.to_dict(), "filters": model.filters,
                 "state_dict": model.state_dict(), **extra}
    atomic_torch_save(state, path)
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> Network | DnCNN:
    """Rebuild a saved network (or DnCNN baseline); ``torch.load(weights_only=True)`` refuses pickled code."""
    from hinas.files import torch_load_untrusted

    state = torch_load_untrusted(path, "network checkpoint", GenotypeError)
    if isinstance(state, dict) and state.get("format") == "hinas.dncnn":
        model: Network | DnCNN = _dncnn(path, state)
    elif not isinstance(state, dict) or state.get("format") != "hinas.network":
        raise GenotypeError(f"{path}: not a hinas network checkpoint (no 'format': 'hinas.network')")
    else:
        genotype = Genotype.from_dict(state.get("genotype"))
        filters = state.get("filters")
        widest = max(genotype.space.widths)
        if isinstance(filters, bool) or not isinstance(filters, int) or not 1 <= filters * widest <= MAX_CHANNELS:
            raise GenotypeError(f"{path}: 'filters' must be a positive integer within {MAX_CHANNELS} channels, got {filters!r}")
        model = Network(genotype, filters=filters)
    try:
        model.load_state_dict(state.get("state_dict"))
    except (RuntimeError, TypeError, AttributeError) as err:
        raise GenotypeError(f"{path}: weights do not fit the genotype it names ({first_line(err)})") from None
    return model.to(map_location)


def _dncnn(path: str | Path, state: dict[str, Any]) -> DnCNN:
    shape = {k: state.get(k) for k in ("in_channels", "depth", "channels")}
    sizes_ok = all(isinstance(shape[k], int) and 3 <= shape[k] <= 1024 for k in ("depth", "channels"))
    if shape["in_channels"] not in (1, 3) or not sizes_ok:
        raise GenotypeError(f"{path}: a DnCNN checkpoint needs in_channels 1 or 3 and integer depth and channels, got {shape}")
    return DnCNN(**shape)

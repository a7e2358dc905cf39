"""Graphviz drawings of a genotype: each layer's cell and the width path through the trellis."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import graphviz

from hinas.errors import RenderError
from hinas.nas.genotype import CellGenotype, Genotype
from hinas.nas.space import MOVES, SearchSpace

INSTALL_DOT = (
    "Graphviz's `dot` program was not found on PATH; install it "
    "(Debian/Ubuntu: apt-get install graphviz; conda: conda install graphviz; macOS: brew install graphviz)"
)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _op_color(space: SearchSpace, op: str) -> str:
    return _PALETTE[space.ops.index(op) % len(_PALETTE)] if op in space.ops else "black"


def state_name(state: int) -> str:
    return {0: "s1 (l-2)", 1: "s0 (l-1)"}.get(state, f"node {state - 2}")


def _cell_into(g: graphviz.Digraph, space: SearchSpace, cell: CellGenotype, prefix: str) -> None:
    g.attr(rankdir="LR")
    for s in (0, 1):
        g.node(f"{prefix}s{s}", state_name(s), shape="box", style="rounded,filled", fillcolor="#dbe9f6")
    for n, node in enumerate(cell):
        g.node(f"{prefix}s{n + 2}", str(n), shape="circle", style="filled", fillcolor="#fdf1c7")
        for op, state in node:
            g.edge(f"{prefix}s{state}", f"{prefix}s{n + 2}", label=op, color=_op_color(space, op), fontcolor=_op_color(space, op))
    g.node(f"{prefix}out", "concat", shape="box", style="rounded,filled", fillcolor="#d9f2d9")
    for n in range(len(cell)):
        g.edge(f"{prefix}s{n + 2}", f"{prefix}out", style="dashed", color="gray50")


def path_graph(genotype: Genotype) -> graphviz.Digraph:
    """The trellis of (layer, level) cells with the chosen width path drawn bold."""
    space = genotype.space
    g = graphviz.Digraph(name="width path",
                         graph_attr={"rankdir": "LR", "label": "width path", "labelloc": "t", "nodesep": "0.3"})
    chosen = set(enumerate(genotype.path, start=1)) | {(0, 0)}
    for layer in range(space.layers + 1):
        with g.subgraph(name=f"rank{layer}", graph_attr={"rank": "same"}) as rank:
            for k in space.layer_levels(layer):
                label = "stem" if layer == 0 else f"L{layer}\\nx{space.widths[k]:g}"
                on = (layer, k) in chosen
                rank.node(f"c{layer}_{k}", label, shape="box", style="filled" if on else "dashed",
                          fillcolor="#fdd49e" if on else "white", group=f"level{k}")
    prev = 0
    for layer in range(space.layers):
        for j in space.layer_levels(layer):
            for move in MOVES:
                k = j + move
                if k in space.layer_levels(layer + 1):
                    on = j == prev and k == genotype.path[layer]
                    g.edge(f"c{layer}_{j}", f"c{layer + 1}_{k}", penwidth="3" if on else "0.5",
                           color="#d94801" if on else "gray70")
        prev = genotype.path[layer]
    return g


def genotype_graph(genotype: Genotype) -> graphviz.Digraph:
    """One picture: the width path, then each layer's cell in its own box."""
    g = graphviz.Digraph(name="genotype", graph_attr={"rankdir": "LR"})
    # dot stacks disconnected clusters bottom-up, so the last layer goes in first.
    for layer in range(len(genotype.cells), 0, -1):
        title = f"layer {layer} (x{genotype.space.widths[genotype.path[layer - 1]]:g})"
        with g.subgraph(name=f"cluster_l{layer}", graph_attr={"label": title, "style": "rounded"}) as sub:
            _cell_into(sub, genotype.space, genotype.cells[layer - 1], f"l{layer}_")
    with g.subgraph(name="cluster_path", graph_attr={"label": "width path", "style": "rounded"}) as sub:
        sub.body += path_graph(genotype).body
    return g


def render(graph: graphviz.Digraph, out: str | Path, formats: tuple[str, ...] = ("svg", "png")) -> list[Path]:
    """Write ``out.<fmt>`` for each format; a missing ``dot`` raises RenderError with the install line."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        try:
            data = graph.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise RenderError(INSTALL_DOT) from None
        target = out.with_name(f"{out.name}.{fmt}")
        target.write_bytes(data)
        written.append(target)
    return written


def draw_genotype(genotype: Genotype, out: str | Path, formats: tuple[str, ...] = ("svg", "png")) -> list[Path]:
    return render(genotype_graph(genotype), out, formats)


def has_dot() -> bool:
    return shutil.which("dot") is not None


def warn_no_dot(instead: str) -> None:
    """One line on stderr, where a terminal or a notebook shows it (a run's log.jsonl is read too late)."""
    print(f"warning: {INSTALL_DOT}; {instead}", file=sys.stderr)


def describe(genotype: Genotype, filters: int | None = None) -> str:
    """A text summary: width path, cells, size of the derived network; what shows a genotype without Graphviz."""
    from hinas.nas.complexity import count_flops, count_params
    from hinas.nas.network import Network

    space = genotype.space
    net = Network(genotype, filters)
    lines = [f"{space.task} network, {space.in_channels} channel(s)" + (f", x{space.scale}" if space.task == "sr" else ""),
             "width path: " + " -> ".join(["stem"] + [f"x{space.widths[k]:g}" for k in genotype.path])]
    for layer, cell in enumerate(genotype.cells, start=1):
        lines.append(f"layer {layer}:")
        lines += [f"  node {n}: " + " + ".join(f"{op}({state_name(s)})" for op, s in node) for n, node in enumerate(cell)]
    size = 256 // space.scale
    lines.append(f"F={net.filters}: {count_params(net) / 1e6:.3f} M parameters, "
                 f"{count_flops(net, (1, space.in_channels, size, size)) / 1e9:.2f} GFLOP for a {size}x{size} input")
    if "latency_ms" in genotype.meta:
        lines.append(f"predicted latency: {genotype.meta['latency_ms']} ms "
                     f"({genotype.meta.get('latency_for', 'unknown setting')})")
    return "\n".join(lines)


@dataclass(frozen=True)
class Picture:
    """A genotype as Jupyter shows it: the drawing as SVG, or its text description where Graphviz is missing."""

    text: str
    svg: str | None = None

    def _repr_svg_(self) -> str | None:
        return self.svg

    def __repr__(self) -> str:
        return self.text


def picture(genotype: Genotype) -> Picture:
    """The drawing for a notebook; without ``dot`` a warning on stderr and the text, so the notebook runs on."""
    text = describe(genotype)
    try:
        return Picture(text, genotype_graph(genotype).pipe(format="svg", encoding="utf-8"))
    except graphviz.ExecutableNotFound:
        warn_no_dot("showing the genotype as text")
        return Picture(text)

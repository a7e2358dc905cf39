"""Matplotlib figures of searches and trainings: what a researcher would rather look at than read.

Every function takes plain run data (a ``history`` list as written to
``history.json``, tensors of architecture weights, images) and returns a
``Figure``, so notebooks, scripts and reports draw the same pictures.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from hinas.nas.space import MOVES, SearchSpace
from hinas.viz.render import state_name

MOVE_NAMES = ("narrower", "same", "wider")


def edge_labels(space: SearchSpace) -> list[str]:
    return [f"{n}<-{state_name(s)}" for n, s in space.edges]


def plot_alphas(space: SearchSpace, alpha_probs: torch.Tensor) -> Figure:
    """One heatmap per alpha (per layer under LWAS): rows are edges, columns operations.

    Colours show the change from the uniform start (1 / number of ops) in percentage points, on a scale
    centred at zero: early in a search the weights move by tenths of a point, which a 0-to-max scale hides.
    """
    probs = torch.as_tensor(alpha_probs).detach().float().cpu()
    flat = (probs.reshape(-1, *probs.shape[2:]) - 1 / len(space.ops)) * 100
    reach = float(flat.abs().max()) or 1.0
    la, ka = probs.shape[:2]
    titles = [f"layer {layer + 1}" + (f", level {k}" if ka > 1 else "") if la > 1 else "all layers (tied)"
              for layer in range(la) for k in range(ka)]
    fig, axes = plt.subplots(1, len(flat), figsize=(2.2 + 1.6 * len(flat) * len(space.ops) / 4, 0.32 * space.num_edges + 1.8),
                             squeeze=False, sharey=True)
    for ax, mat, title in zip(axes[0], flat, titles):
        im = ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-reach, vmax=reach, aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(space.ops)), space.ops, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(space.num_edges), edge_labels(space), fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label=f"softmax(alpha) - 1/{len(space.ops)}\n(percentage points)")
    return fig


def plot_betas(space: SearchSpace, beta_probs: torch.Tensor, path: Sequence[int] | None = None) -> Figure:
    """Transition probabilities per source layer: rows are source levels, columns moves; illegal moves blank."""
    probs = torch.as_tensor(beta_probs).detach().float().cpu().clone()
    mask = space.move_mask()
    probs[~mask] = float("nan")
    fig, axes = plt.subplots(1, space.layers, figsize=(2.4 * space.layers + 1, 2.6), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        im = ax.imshow(probs[layer].numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title("stem" if layer == 0 else f"from layer {layer}", fontsize=9)
        ax.set_xticks(range(len(MOVES)), MOVE_NAMES, fontsize=7)
        ax.set_yticks(range(space.levels), [f"x{w:g}" for w in space.widths], fontsize=7)
        if path is not None:
            src = 0 if layer == 0 else path[layer - 1]
            ax.add_patch(plt.Rectangle((MOVES.index(path[layer] - src) - 0.5, src - 0.5), 1, 1, fill=False, ec="cyan", lw=2))
    fig.colorbar(im, ax=axes[0].tolist(), label="softmax(beta)")
    return fig


def plot_search_history(history: list[dict[str, Any]], best_epoch: int | None = None) -> Figure:
    """Losses of both splits and validation PSNR per epoch; the selected epoch is marked."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(epochs, [h["weight_loss"] for h in history], label="weight split (SGD)")
    arch = [(h["epoch"], h["arch_loss"]) for h in history if h["arch_loss"] is not None]
    if arch:
        ax1.plot(*zip(*arch), label="architecture split (Adam)")
    ax1.set(xlabel="epoch", ylabel="loss", title="training losses")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, [h["val_psnr"] for h in history], marker=".", label="supernet")
    ax2.plot(epochs, [h["input_psnr"] for h in history], ls="--", color="gray", label="degraded input")
    ax2.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation")
    if best_epoch is not None:
        ax2.axvline(best_epoch, color="C3", ls="--", label=f"selected (epoch {best_epoch})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_alpha_evolution(history: list[dict[str, Any]], space: SearchSpace) -> Figure:
    """Mean weight of each operation over the edges of each alpha, epoch by epoch, as the change from uniform.

    The weights start at 1 / number of ops; plotted raw, a short search's lines sit on top of each other.
    """
    alphas = torch.tensor([h["alpha"] for h in history])  # (epochs, la, ka, edges, ops)
    per_op = (alphas.mean(dim=3).flatten(1, 2) - 1 / len(space.ops)) * 100  # (epochs, alphas, ops)
    epochs = [h["epoch"] for h in history]
    la, ka = alphas.shape[1:3]
    titles = [f"layer {layer + 1}" + (f", level {k}" if ka > 1 else "") if la > 1 else "all layers (tied)"
              for layer in range(la) for k in range(ka)]
    fig, axes = plt.subplots(1, per_op.shape[1], figsize=(3.6 * per_op.shape[1], 3.4), squeeze=False, sharey=True,
                             layout="constrained")
    for i, ax in enumerate(axes[0]):
        for o, name in enumerate(space.ops):
            ax.plot(epochs, per_op[:, i, o], label=name, ls="--" if name in ("identity", "zero") else "-", color=f"C{o}")
        ax.set(xlabel="epoch", title=titles[i])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"mean softmax(alpha) - 1/{len(space.ops)}\n(percentage points)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    return fig


def plot_beta_evolution(history: list[dict[str, Any]], space: SearchSpace) -> Figure:
    """Probability of every legal move, per source layer, epoch by epoch, as the change since the first epoch.

    The moves start uniform (1/2 or 1/3 each) and move by fractions of a point in a short search.
    """
    betas = torch.tensor([h["beta"] for h in history])  # (epochs, layers, levels, moves)
    betas = (betas - betas[:1]) * 100
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, space.layers, figsize=(3.6 * space.layers, 3.6), squeeze=False, sharey=True)
    for layer, ax in enumerate(axes[0]):
        for j, m in space.legal_moves(layer):
            ax.plot(epochs, betas[:, layer, j, m], label=f"x{space.widths[j]:g} {MOVE_NAMES[m]}")
        ax.set(xlabel="epoch", title="stem" if layer == 0 else f"from layer {layer}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    axes[0][0].set_ylabel(f"softmax(beta) change since epoch {epochs[0]}\n(percentage points)")
    fig.tight_layout()
    return fig


def plot_collapse(history: list[dict[str, Any]]) -> Figure:
    """The collapse indicators: skip connections in the derived cells, edges whose strongest op is 'zero'."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    width = 0.4
    ax.bar([e - width / 2 for e in epochs], [h["skip_ops"] for h in history], width, label="identity ops in genotype")
    ax.bar([e + width / 2 for e in epochs], [h["zero_edges"] for h in history], width, label="edges led by 'zero'")
    ax.set(xlabel="epoch", ylabel="count", title="collapse indicators")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(history: list[dict[str, Any]]) -> Figure:
    """Retraining: training loss and validation PSNR against iterations, with the degraded input's PSNR."""
    its = [h["iteration"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(its, [h["train_loss"] for h in history], marker=".")
    ax1.set(xlabel="iteration", ylabel="loss", title="training loss (mean since last validation)")
    ax2.plot(its, [h["val_psnr"] for h in history], marker=".", label="restored")
    ax2.plot(its, [h["input_psnr"] for h in history], ls="--", color="gray", label="degraded input")
    ax2.set(xlabel="iteration", ylabel="PSNR (dB)", title="validation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str = "") -> Figure:
    """Named (x, y) curves on one axis, e.g. validation PSNR against training minutes for several recipes."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_comparison(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], crop: int = 96) -> Figure:
    """Per row (name, degraded, restored, target): centre crops side by side and the absolute error maps.

    SR inputs are shown upscaled to the target's size (nearest), so crops align.
    """
    fig, axes = plt.subplots(len(rows), 5, figsize=(12, 2.4 * len(rows)), squeeze=False, layout="constrained")
    for ax_row, (name, degraded, restored, target) in zip(axes, rows):
        h, w = target.shape[-2:]
        if degraded.shape[-2:] != (h, w):
            degraded = torch.nn.functional.interpolate(degraded[None], size=(h, w), mode="nearest")[0]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        cut = [t[..., top : top + crop, left : left + crop].clamp(0, 1).float().cpu() for t in (degraded, restored, target)]
        err_in, err_out = ((cut[i] - cut[2]).abs().mean(0) for i in (0, 1))
        vmax = float(err_in.max()) or 1.0
        for ax, img, title in zip(ax_row[:3], cut, ("degraded", "restored", "ground truth")):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_title(f"{name}: {title}" if title == "degraded" else title, fontsize=9)
        for ax, err, title in ((ax_row[3], err_in, "|degraded - truth|"), (ax_row[4], err_out, "|restored - truth|")):
            im = ax.imshow(err.numpy(), cmap="inferno", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
        for ax in ax_row:
            ax.axis("off")
        fig.colorbar(im, ax=list(ax_row[3:]), shrink=0.9, label="absolute error (0-1)")
    return fig


FAMILY_COLORS = {"hinas": "tab:blue", "random": "tab:orange", "dncnn": "tab:green", "bicubic": "tab:gray"}


def plot_psnr_by_model(rows: Sequence[dict[str, Any]], sets: Sequence[str], title: str) -> Figure:
    """PSNR of every model: one row of panels per (task, level), one panel per test set, dots coloured by family.

    Dots with their values, not bars: the axis spans the models' range (a bar's length from an axis that does
    not start at 0 dB would exaggerate differences; from 0 dB it would hide them).

    ``rows`` are :func:`hinas.results.collect` rows; ``title`` should state the budget and hardware.
    """
    blocks = list(dict.fromkeys((r["task"], r["level"]) for r in rows))
    per_block = [[s for s in sets if any(r["task"] == t and r["level"] == lv and f"{s}/psnr" in r for r in rows)]
                 for t, lv in blocks]
    cols = max(len(b) for b in per_block)
    fig, axes = plt.subplots(len(blocks), cols, figsize=(3.8 * cols, 2.9 * len(blocks) + 0.6), squeeze=False)
    for ax_row, (task, level), block_sets in zip(axes, blocks, per_block):
        for ax in ax_row[len(block_sets):]:
            ax.axis("off")
        for ax, s in zip(ax_row, block_sets):
            chosen = [r for r in rows if r["task"] == task and r["level"] == level and f"{s}/psnr" in r]
            values = [r[f"{s}/psnr"] for r in chosen]
            ax.scatter(values, range(len(chosen)), color=[FAMILY_COLORS.get(r["family"], "tab:purple") for r in chosen], zorder=3)
            for y, v in enumerate(values):
                ax.annotate(f"{v:.2f}", (v, y), xytext=(5, 0), textcoords="offset points", va="center", fontsize=7)
            ax.set_yticks(range(len(chosen)), [r["model"] for r in chosen], fontsize=8)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            low, high = min(values), max(values)
            ax.set_xlim(low - 0.1 * (high - low + 0.5), high + 0.25 * (high - low + 0.5))
            ax.set_title(f"{s}, {'sigma ' if task == 'denoise' else 'x'}{level}", fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
        ax_row[0].set_xlabel("PSNR (dB); axis spans the values", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 30 * max(3, cols))), fontsize=9)
    fig.tight_layout()
    return fig


def plot_latency_front(rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], set_name: str, title: str) -> Figure:
    """PSNR on ``set_name`` against measured latency, dots coloured by family, the Pareto ``front`` as a step line and
    half of DnCNN-17's latency as a dashed line. ``rows`` and ``front``: :func:`hinas.studies.results.latency_rows`
    and :func:`~hinas.studies.results.pareto_front`."""
    chosen = [r for r in rows if r.get("latency_ms") and f"{set_name}/psnr" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for family in dict.fromkeys(r["family"] for r in chosen):
        mine = [r for r in chosen if r["family"] == family]
        ax.scatter([r["latency_ms"] for r in mine], [r[f"{set_name}/psnr"] for r in mine], label=family, zorder=3,
                   color=FAMILY_COLORS.get(family.split("-")[0], "tab:purple"), marker="x" if family == "random-lat" else "o")
    for r in chosen:
        if r["family"] != "random-lat":
            ax.annotate(r["model"], (r["latency_ms"], r[f"{set_name}/psnr"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=7)
    ax.step([r["latency_ms"] for r in front], [r[f"{set_name}/psnr"] for r in front], where="post", color="grey",
            alpha=0.6, label="front", zorder=2)
    dncnn = [r["latency_ms"] for r in chosen if r["family"] == "dncnn"]
    if dncnn:
        ax.axvline(dncnn[0] / 2, color="grey", linestyle="--", linewidth=1, label="half DnCNN-17")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel(f"{set_name} PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    fig.tight_layout()
    return fig

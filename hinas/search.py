"""The HiNAS search: first-order alternating bi-level optimisation of weights and architecture.

Each step after the warm-up does one Adam step on alphas and betas with a batch
from the architecture split, then one SGD step on the weights with a batch from
the weight split (the authors' order). After every epoch the genotype is
derived and the supernet is validated; from ``select_from`` on, the genotype
with the best score SSIM + PSNR/100 is kept, which stops collapse into
parameter-free cells from winning late in the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .complexity import count_params
from .data import PatchDataset, in_memory, load_images, split_images
from .errors import ConfigError, RenderError
from .genotype import Genotype
from .losses import restoration_loss, search_lr
from .plots import plot_alphas, plot_betas
from .render import draw_genotype
from .runtime import RunDir, amp_dtype, atomic_torch_save, autocast, pick_device, prepare_device, seed_everything, write_json
from .settings import SearchConfig
from .supernet import Supernet


@dataclass
class SearchResult:
    genotype: Genotype
    best_epoch: int
    history: list[dict[str, Any]]
    run_dir: Path


def score(psnr: float, ssim: float) -> float:
    """The authors' selection score."""
    return ssim + psnr / 100


def collapse_indicators(model: Supernet, genotype: Genotype) -> dict[str, int]:
    """Skip ops in the derived cells, and edges whose strongest op is 'zero' (what DARTS-style collapse looks like)."""
    ops = model.space.ops
    zero = ops.index("zero") if "zero" in ops else None
    strongest = model.alpha_probs().argmax(-1)
    return {
        "skip_ops": genotype.op_counts().get("identity", 0),
        "zero_edges": int((strongest == zero).sum()) if zero is not None else 0,
    }


def _loaders(cfg: SearchConfig, weight_imgs, arch_imgs, ctx: distributed.Context) -> tuple[DataLoader, DataLoader]:
    space = cfg.space
    length = max(len(weight_imgs), len(arch_imgs)) * cfg.patches_per_image
    if length < cfg.batch:
        raise ConfigError(
            f"search.batch: {cfg.batch} is larger than the {length} patches an epoch draws from each split "
            f"({len(weight_imgs)} weight / {len(arch_imgs)} arch images x patches_per_image {cfg.patches_per_image}); "
            "lower batch or raise patches_per_image"
        )
    loaders = []
    for i, imgs in enumerate((weight_imgs, arch_imgs)):
        ds = PatchDataset(imgs, cfg.patch, task=space.task, scale=space.scale, sigma=cfg.sigmas, length=length, seed=cfg.seed * 2 + i)
        batches = ctx.batches(length, cfg.batch)
        loaders.append(DataLoader(ds, batch_sampler=batches, num_workers=cfg.workers, pin_memory=torch.cuda.is_available()))
    return loaders[0], loaders[1]


def search(cfg: SearchConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> SearchResult:
    """Run a search into run directory ``out``; returns the selected genotype (also in ``out/genotype.json``)."""
    ctx = distributed.init(pick_device(cfg.device))  # data-parallel under torchrun; a no-op context otherwise
    progress = progress and ctx.is_main
    run = RunDir(ctx.run_path(out), cfg, overwrite=overwrite)
    seed_everything(cfg.seed)
    device = ctx.device
    prepare_device(device)
    amp = amp_dtype(device, cfg.amp)
    space = cfg.space
    images = load_images(cfg.data, cfg.data_root or None, channels=space.in_channels)
    weight_imgs, arch_imgs, val_imgs = split_images(images, cfg.val_images, cfg.seed)
    weight_imgs, arch_imgs, val_imgs = in_memory(weight_imgs), in_memory(arch_imgs), in_memory(val_imgs, cfg.val_crop)
    w_loader, a_loader = _loaders(cfg, weight_imgs, arch_imgs, ctx)

    model = ctx.replicate(Supernet(space).to(device))
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)

    def loss_on(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            pred = model(x)
        return restoration_loss(pred.float(), y, cfg.pixel_loss, cfg.ssim_weight, cfg.loss_scale, batch_mean=ctx.batch_mean)

    steps = len(w_loader)
    run.log(event="start", device=str(device), amp=str(amp), images={"weights": len(weight_imgs), "arch": len(arch_imgs),
            "val": len(val_imgs)}, steps_per_epoch=steps, params=count_params(model))
    history: list[dict[str, Any]] = []
    best: tuple[float, int, Genotype] | None = None
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps, desc="search", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for loader in (w_loader, a_loader):
            loader.dataset.set_epoch(epoch)
        w_losses, a_losses = [], []
        for step, ((xw, yw), (xa, ya)) in enumerate(zip(w_loader, a_loader)):
            lr = search_lr(epoch - 1 + step / steps, cfg.epochs, cfg.lr, cfg.lr_min, cfg.lr_cycle, cfg.lr_power)
            for group in w_opt.param_groups:
                group["lr"] = lr
            if epoch >= cfg.arch_start:
                a_opt.zero_grad(set_to_none=True)
                a_loss = loss_on(xa, ya)
                a_loss.backward()
                ctx.sync_grads(model.arch_parameters())
                a_opt.step()
                a_losses.append(a_loss.item())
            w_opt.zero_grad(set_to_none=True)
            w_loss = loss_on(xw, yw)
            w_loss.backward()
            ctx.sync_grads(model.weight_parameters())
            w_opt.step()
            w_losses.append(w_loss.item())
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{w_losses[-1]:.4f}", refresh=False)

        w_losses, a_losses = ctx.average(w_losses), ctx.average(a_losses)
        genotype = model.genotype(meta={"epoch": epoch})
        val = ctx.evaluate(model, val_imgs, task=space.task, sigma=cfg.val_sigma, scale=space.scale if space.task == "sr" else None)
        record = {
            "epoch": epoch, "lr": lr, "weight_loss": sum(w_losses) / len(w_losses),
            "arch_loss": sum(a_losses) / len(a_losses) if a_losses else None,
            "val_psnr": val["psnr"], "val_ssim": val["ssim"], "input_psnr": val["input_psnr"],
            "score": score(val["psnr"], val["ssim"]),
            **collapse_indicators(model, genotype),
            "path": list(genotype.path), "cells": genotype.to_dict()["cells"],
            "alpha": model.alpha_probs().tolist(), "beta": model.beta_probs().tolist(),
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if epoch >= cfg.select_from and (best is None or record["score"] > best[0]):
            best = (record["score"], epoch, genotype)
            genotype.save(run / "genotype.json")
        run.log(event="epoch", **{k: v for k, v in record.items() if k not in ("alpha", "beta")})
        bar.set_postfix(epoch=epoch, loss=f"{record['weight_loss']:.4f}", val_psnr=f"{val['psnr']:.2f}")
        atomic_torch_save(
            {"epoch": epoch, "model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
             "best_epoch": best[1] if best else None},
            run / "checkpoint.pt",
        )
    bar.close()

    if best is None:  # select_from lies beyond the last epoch: keep the final genotype, and say so
        best = (history[-1]["score"], cfg.epochs, genotype)
        genotype.save(run / "genotype.json")
    _, best_epoch, chosen = best
    write_json(run / "history.json", history)
    _draw(run, chosen, model)
    picked = history[best_epoch - 1]
    ctx.check_replicas(run / "replicas.json", model, genotype=chosen.to_dict(), best_epoch=best_epoch)
    metrics = {
        "best_epoch": best_epoch, "val_psnr": picked["val_psnr"], "val_ssim": picked["val_ssim"], "score": picked["score"],
        "skip_ops": picked["skip_ops"], "epochs": cfg.epochs, "steps": cfg.epochs * steps, "seconds": time.perf_counter() - start,
        "device": str(device), "supernet_params": count_params(model), "genotype": chosen.to_dict(),
        "convention": val["convention"],
    }
    write_json(run / "metrics.json", metrics)
    run.log(event="end", best_epoch=best_epoch, seconds=metrics["seconds"])
    run.close()
    return SearchResult(chosen, best_epoch, history, run.path)


def _draw(run: RunDir, genotype: Genotype, model: Supernet) -> None:
    """Drawings are a convenience: a missing Graphviz is logged, never fatal to a finished search."""
    import matplotlib.pyplot as plt

    try:
        draw_genotype(genotype, run / "genotype")
    except RenderError as err:
        run.log(event="warning", message=str(err))
    for name, fig in (("alphas.png", plot_alphas(model.space, model.alpha_probs())),
                      ("betas.png", plot_betas(model.space, model.beta_probs(), genotype.path))):
        fig.savefig(run / name, dpi=110, bbox_inches="tight")
        plt.close(fig)

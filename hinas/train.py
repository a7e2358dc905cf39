"""Retraining a derived network from its genotype, keeping the checkpoint with the best validation score."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .complexity import count_flops, count_params
from .data import PatchDataset, in_memory, load_images, split_images
from .genotype import Genotype
from .losses import poly_lr, restoration_loss
from .network import Network, save_model
from .runtime import RunDir, amp_dtype, atomic_torch_save, autocast, pick_device, prepare_device, seed_everything, write_json
from .search import score
from .settings import TrainConfig


def resolve_genotype(cfg: TrainConfig) -> Genotype:
    """The genotype file named by ``cfg.genotype`` (a file or a search run directory), at the retraining scale."""
    path = Path(cfg.genotype)
    genotype = Genotype.load(path / "genotype.json" if path.is_dir() else path)
    space = genotype.space
    if space.task == "sr" and cfg.scale and cfg.scale != space.scale:
        genotype = Genotype(space.replace(scale=cfg.scale), genotype.path, genotype.cells, genotype.meta)
    return genotype


def retrain(cfg: TrainConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``Network(genotype, cfg.filters)`` into run directory ``out``; returns its metrics (also ``out/metrics.json``)."""
    genotype = resolve_genotype(cfg)
    ctx = distributed.init(pick_device(cfg.device))  # data-parallel under torchrun; a no-op context otherwise
    progress = progress and ctx.is_main
    run = RunDir(ctx.run_path(out), cfg, overwrite=overwrite)
    genotype.save(run / "genotype.json")
    seed_everything(cfg.seed)
    device = ctx.device
    prepare_device(device)
    amp = amp_dtype(device, cfg.amp)
    space = genotype.space
    sr = space.task == "sr"

    images = load_images(cfg.data, cfg.data_root or None, channels=space.in_channels)
    if cfg.val_data:
        train_imgs, val_imgs = images, load_images(cfg.val_data, cfg.data_root or None, channels=space.in_channels)
    else:
        a, b, val_imgs = split_images(images, cfg.val_images, cfg.seed)
        train_imgs = a + b
    train_imgs, val_imgs = in_memory(train_imgs), in_memory(val_imgs, cfg.val_crop)
    dataset = PatchDataset(train_imgs, cfg.patch, task=space.task, scale=space.scale, sigma=(cfg.sigma,),
                           rescale=None if sr or not cfg.rescale else tuple(cfg.rescale), length=cfg.iterations * cfg.batch, seed=cfg.seed)
    batches = ctx.batches(len(dataset), cfg.batch)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, pin_memory=device.type == "cuda")

    model = ctx.replicate(Network(genotype, cfg.filters).to(device))
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    val_kw = {"task": space.task, "sigma": None if sr else cfg.sigma, "scale": space.scale if sr else None}
    params = count_params(model)
    run.log(event="start", device=str(device), amp=str(amp), params=params, train_images=len(train_imgs), val_images=len(val_imgs))

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=cfg.iterations, desc="retrain", disable=not progress, dynamic_ncols=True)
    model.train()
    for it, (x, y) in enumerate(loader, start=1):
        for group in opt.param_groups:
            group["lr"] = poly_lr(it - 1, cfg.iterations, cfg.lr, cfg.lr_power)
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            pred = model(x)
        loss = restoration_loss(pred.float(), y, cfg.pixel_loss, cfg.ssim_weight, batch_mean=ctx.batch_mean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.sync_grads(model.parameters())
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.update()
        if it % cfg.val_every == 0 or it == cfg.iterations:
            losses = ctx.average(losses)
            val = ctx.evaluate(model, val_imgs, **val_kw)
            record = {"iteration": it, "train_loss": sum(losses) / len(losses), "lr": opt.param_groups[0]["lr"],
                      "val_psnr": val["psnr"], "val_ssim": val["ssim"], "input_psnr": val["input_psnr"],
                      "score": score(val["psnr"], val["ssim"]), "seconds": time.perf_counter() - start}
            losses = []
            history.append(record)
            run.log(event="validation", **record)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_psnr=f"{val['psnr']:.2f}")
            if best is None or record["score"] > best["score"]:
                best = record
                save_model(model, run / "best.pt", iteration=it, val_psnr=val["psnr"], val_ssim=val["ssim"])
            atomic_torch_save({"iteration": it, "model": model.state_dict(), "opt": opt.state_dict()}, run / "checkpoint.pt")
    bar.close()

    ctx.check_replicas(run / "replicas.json", model, best_iteration=best["iteration"])
    write_json(run / "history.json", history)
    metrics = {
        "task": space.task, "sigma": val_kw["sigma"], "scale": val_kw["scale"], "filters": cfg.filters,
        "params": params, "params_m": params / 1e6,
        "gflops_256": count_flops(model, (1, space.in_channels, 256 // space.scale, 256 // space.scale)) / 1e9,
        "best_iteration": best["iteration"], "val_psnr": best["val_psnr"], "val_ssim": best["val_ssim"],
        "input_psnr": best["input_psnr"], "iterations": cfg.iterations, "seconds": time.perf_counter() - start,
        "device": str(device), "convention": val["convention"],
    }
    write_json(run / "metrics.json", metrics)
    run.log(event="end", **{k: v for k, v in metrics.items() if k != "convention"})
    run.close()
    return metrics

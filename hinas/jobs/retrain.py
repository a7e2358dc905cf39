"""Retraining a derived network from its genotype, keeping the checkpoint with the best validation score."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm  # plain text: it shows in terminals, notebooks and exported notebooks alike

from hinas.data.images import PatchDataset, in_memory, load_images, split_images
from hinas.engine import distributed
from hinas.engine.checkpoint import Checkpointer, Progress, StopSignals, loader_generator, restore_state
from hinas.engine.guard import checked_step
from hinas.engine.losses import poly_lr, restoration_loss
from hinas.engine.rundir import CHECKPOINT, RunDir
from hinas.engine.settings import TrainConfig
from hinas.errors import ConfigError, NonFiniteError
from hinas.eval.metrics import convention_for
from hinas.eval.scoring import check_measurable, score
from hinas.files import write_json
from hinas.hardware import autocast, set_threads
from hinas.nas.baselines import DnCNN
from hinas.nas.complexity import count_flops, count_params
from hinas.nas.genotype import Genotype
from hinas.nas.network import Network, save_model


def resolve_genotype(cfg: TrainConfig) -> Genotype:
    """The genotype file named by ``cfg.genotype`` (a file or a search run directory), at the retraining scale."""
    path = Path(cfg.genotype)
    genotype = Genotype.load(path / "genotype.json" if path.is_dir() else path)
    space = genotype.space
    if space.task == "sr" and cfg.scale and cfg.scale != space.scale:
        genotype = Genotype(space.replace(scale=cfg.scale), genotype.path, genotype.cells, genotype.meta)
    elif space.task == "denoise" and cfg.scale:
        raise ConfigError(f"train.scale: {cfg.scale} applies to SR genotypes only; {path} is a denoising genotype (use 0)")
    return genotype


@dataclass
class TrainProgress(Progress):
    iteration: int = 0
    """Iterations done."""
    losses: list[float] = field(default_factory=list)
    """Training losses since the last validation."""
    best: dict[str, Any] | None = None
    """The history record of the best validation so far (its weights are ``best.pt``)."""

    def position(self) -> str:
        return f"iteration {self.iteration}"


def retrain(cfg: TrainConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False, force: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Train ``Network(genotype, cfg.filters)`` into run directory ``out``; returns its metrics (also ``out/metrics.json``).

    ``resume`` and ``force`` work as in :func:`hinas.search.search`; every input is checked before ``out`` is touched.
    """
    out = Path(out)
    start = distributed.start_run(out, "retrain", cfg, overwrite=overwrite, resume=resume, force=force, progress=progress)
    set_threads(cfg.threads)
    genotype = resolve_genotype(cfg) if cfg.model == "hinas" else None
    saved, ctx, progress, amp = start.saved, start.ctx, start.progress, start.amp
    device = ctx.device
    space = genotype.space if genotype is not None else DnCNN().space
    sr = space.task == "sr"

    images = load_images(cfg.data, cfg.data_root or None, channels=space.in_channels)
    if cfg.val_data:
        train_imgs, val_imgs = images, load_images(cfg.val_data, cfg.data_root or None, channels=space.in_channels)
    else:
        a, b, val_imgs = split_images(images, cfg.val_images, cfg.seed)
        train_imgs = a + b
    train_imgs, val_imgs = in_memory(train_imgs), in_memory(val_imgs, cfg.val_crop)
    check_measurable(val_imgs, convention_for(space.task, space.scale))
    dataset = PatchDataset(train_imgs, cfg.patch, task=space.task, scale=space.scale, sigma=(cfg.sigma,),
                           rescale=None if sr or not cfg.rescale else tuple(cfg.rescale), length=cfg.iterations * cfg.batch, seed=cfg.seed)
    sampler = ctx.batches(len(dataset), cfg.batch)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        generator=loader_generator(cfg.seed))

    net = Network(genotype, cfg.filters) if genotype is not None else DnCNN(space.in_channels)
    model = ctx.replicate(net.to(device))
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    params = list(model.parameters())
    val_kw = {"task": space.task, "sigma": None if sr else cfg.sigma, "scale": space.scale if sr else None}
    n_params = count_params(model)

    resumed = restore_state(TrainProgress, saved, model, {"weights": opt}, scaler, out / CHECKPOINT) if saved else None

    run = RunDir(ctx.run_path(out), cfg, overwrite=overwrite, resume=resumed is not None)
    if genotype is not None:
        genotype.save(run / "genotype.json")
    ckpt = Checkpointer(run, "retrain", cfg, model, {"weights": opt}, scaler)
    if resumed is not None:
        state = resumed
        ckpt.resumed(state, saved)
    else:
        run.log(event="start", device=str(device), amp=str(amp), params=n_params, train_images=len(train_imgs), val_images=len(val_imgs))
        state = TrainProgress()
        ckpt.save(state)  # the first rollback target and resume point

    def validate(state: TrainProgress) -> None:
        it = state.iteration
        val = ctx.evaluate(model, val_imgs, **val_kw)
        losses = ctx.average(state.losses)
        record = {"iteration": it, "train_loss": sum(losses) / len(losses), "lr": opt.param_groups[0]["lr"],
                  "val_psnr": val["psnr"], "val_ssim": val["ssim"], "input_psnr": val["input_psnr"],
                  "score": score(val["psnr"], val["ssim"]), "seconds": ckpt.seconds()}
        state.losses = []
        state.history.append(record)
        run.log(event="validation", **record)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_psnr=f"{val['psnr']:.2f}")
        if state.best is None or record["score"] > state.best["score"]:
            state.best = record
            save_model(model, run / "best.pt", iteration=it, val_psnr=val["psnr"], val_ssim=val["ssim"])

    def train(state: TrainProgress, stop: StopSignals) -> None:
        """The remaining iterations, validating and checkpointing on schedule, and checkpointing on a signal before stopping."""
        model.train()
        sampler.start = state.iteration * cfg.batch
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = poly_lr(state.iteration, cfg.iterations, cfg.lr, cfg.lr_power) * state.lr_scale
            x = x.to(device, non_blocking=True, memory_format=fmt)
            y = y.to(device, non_blocking=True)
            with autocast(device, amp):
                pred = model(x)
            loss = restoration_loss(pred.float(), y, cfg.pixel_loss, cfg.ssim_weight, batch_mean=ctx.batch_mean)
            state.losses.append(checked_step(loss, opt, scaler, params, f"step at {state.position()}", clip=cfg.grad_clip,
                                             sync=ctx.sync_grads))
            state.iteration += 1
            bar.update()
            it = state.iteration
            validated = it % cfg.val_every == 0 or it == cfg.iterations
            if validated:
                validate(state)
            if validated or stop.received or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0):
                ckpt.save(state)
            if stop.received and it < cfg.iterations:
                raise ckpt.interrupted(state, stop.received)

    bar = tqdm(total=cfg.iterations, initial=state.iteration, desc="retrain", disable=not progress, dynamic_ncols=True)
    try:
        with StopSignals() as stop:
            while state.iteration < cfg.iterations:
                try:
                    train(state, stop)
                except NonFiniteError as fault:
                    state = ckpt.rollback(state, fault)
        best = state.best
        ctx.check_replicas(run / "replicas.json", model, best_iteration=best["iteration"])
        write_json(run / "history.json", state.history)
        metrics = {
            "model": cfg.model, "task": space.task, "sigma": val_kw["sigma"], "scale": val_kw["scale"],
            "filters": cfg.filters if genotype is not None else net.channels,
            "params": n_params, "params_m": n_params / 1e6,
            "gflops_256": count_flops(model, (1, space.in_channels, 256 // space.scale, 256 // space.scale)) / 1e9,
            "best_iteration": best["iteration"], "val_psnr": best["val_psnr"], "val_ssim": best["val_ssim"],
            "input_psnr": best["input_psnr"], "iterations": cfg.iterations, "rollbacks": state.rollbacks,
            "seconds": ckpt.seconds(), "device": str(device),
            "convention": dataclasses.asdict(convention_for(space.task, space.scale)),
        }
        write_json(run / "metrics.json", metrics)
        run.log(event="end", **{k: v for k, v in metrics.items() if k != "convention"})
    finally:
        bar.close()
        run.close()
    return metrics

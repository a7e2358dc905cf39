"""Retraining a derived network from its genotype, keeping the checkpoint with the best validation score."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, process_time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hinas.data.images import PatchDataset, in_memory, load_images, split_images
from hinas.engine.checkpoint import Progress, loader_generator
from hinas.engine.loop import Job, fit
from hinas.engine.losses import retrain_lr, weight_optimizer
from hinas.engine.settings import TrainConfig
from hinas.errors import ConfigError
from hinas.eval.metrics import convention_for
from hinas.eval.scoring import check_measurable, score
from hinas.files import write_json
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
    planned: int = 0
    """Iterations this run takes: ``iterations``, or with ``minutes`` what fits once the step time is measured (0 until then)."""
    step_seconds: float = 0.0
    """The measured seconds per training step that fixed ``planned`` (``minutes`` runs)."""

    def position(self) -> str:
        return f"iteration {self.iteration}"


WARM_STEPS = 5
"""Steps a ``minutes`` run takes before timing (first calls allocate and warm caches)."""
TIMED_STEPS = 20
"""Steps a ``minutes`` run times to fix its number of iterations."""


class RetrainJob(Job[TrainProgress, dict[str, Any]]):
    """Retraining's part of the training loop: one network, one step per batch, validation every ``val_every``."""

    kind = "retrain"
    progress_type = TrainProgress
    cfg: TrainConfig

    def prepare(self) -> None:
        cfg = self.cfg
        self._timer: tuple[int, float] | None = None
        self.genotype = resolve_genotype(cfg) if cfg.model == "hinas" else None
        space = self.genotype.space if self.genotype is not None else None
        task, scale, channels = (space.task, space.scale, space.in_channels) if space else (DnCNN.task, DnCNN.scale, 1)
        self.task, self.scale, self.channels = task, scale, channels
        sr = task == "sr"
        images = load_images(cfg.data, cfg.data_root or None, channels=channels)
        if cfg.val_data:
            train_imgs, val_imgs = images, load_images(cfg.val_data, cfg.data_root or None, channels=channels)
        else:
            a, b, val_imgs = split_images(images, cfg.val_images, cfg.seed)
            train_imgs = a + b
        train_imgs, self.val_imgs = in_memory(train_imgs), in_memory(val_imgs, cfg.val_crop)
        self.train_count = len(train_imgs)
        check_measurable(self.val_imgs, convention_for(task, scale))
        dataset = PatchDataset(train_imgs, cfg.patch, task=task, scale=scale, sigma=(cfg.sigma,),
                               rescale=None if sr or not cfg.rescale else tuple(cfg.rescale), length=cfg.iterations * cfg.batch,
                               seed=cfg.seed)
        self.sampler = self.ctx.batches(len(dataset), cfg.batch)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=cfg.workers,
                                 pin_memory=self.device.type == "cuda", generator=loader_generator(cfg.seed))
        self.val_kw = {"task": task, "sigma": None if sr else cfg.sigma, "scale": scale if sr else None}

    def build(self) -> nn.Module:
        return Network(self.genotype, self.cfg.filters) if self.genotype is not None else DnCNN(self.channels)

    def make_optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
        cfg = self.cfg
        self.params = list(model.parameters())
        return {"weights": weight_optimizer(self.params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)}

    def opened(self) -> None:
        if self.genotype is not None:
            self.genotype.save(self.run / "genotype.json")

    def start_record(self) -> dict[str, Any]:
        return {"params": count_params(self.model), "train_images": self.train_count, "val_images": len(self.val_imgs)}

    def total(self, state: TrainProgress) -> int:
        """The run's length in iterations (before a ``minutes`` run has timed its steps: the ``iterations`` ceiling)."""
        return state.planned or self.cfg.iterations

    def steps(self, state: TrainProgress) -> tuple[int, int]:
        return state.iteration, self.total(state)

    def finished(self, state: TrainProgress) -> bool:
        return state.iteration >= self.total(state)

    def batches(self, state: TrainProgress) -> Iterable[Any]:
        self.model.train()
        self.sampler.start = state.iteration * self.cfg.batch
        return self.loader

    def step(self, state: TrainProgress, batch: Any) -> None:
        cfg, opt = self.cfg, self.optimizers["weights"]
        if not state.planned:
            self._plan(state)
        for group in opt.param_groups:
            group["lr"] = retrain_lr(state.iteration, self.total(state), cfg.lr, cfg.schedule, cfg.lr_power) * state.lr_scale
        state.losses.append(self.guarded_step(lambda: self.loss(*batch), opt, self.params, f"step at {state.position()}",
                                              clip=cfg.grad_clip))
        state.iteration += 1

    def budget_clock(self) -> Callable[[], float]:
        """What a ``minutes`` budget counts: this process's CPU time on a CPU (all its threads; a busy neighbour on
        shared cores then slows the run but does not shrink its work), wall time on an accelerator."""
        return process_time if self.device.type == "cpu" else perf_counter

    def _plan(self, state: TrainProgress) -> None:
        """Fix ``state.planned``: ``iterations``, or for a ``minutes`` budget the iterations that fit at the step time
        measured over ``TIMED_STEPS`` steps after ``WARM_STEPS`` (every rank agrees on the mean)."""
        cfg = self.cfg
        if not cfg.minutes:
            state.planned = cfg.iterations
            return
        if state.iteration < WARM_STEPS:
            return
        clock = self.budget_clock()
        if self._timer is None:
            self._timer = (state.iteration, clock())
            return
        first, start = self._timer
        if state.iteration - first < TIMED_STEPS:
            return
        state.step_seconds = self.ctx.average([(clock() - start) / (state.iteration - first)])[0]
        state.planned = max(state.iteration + 1, min(cfg.iterations, round(cfg.minutes * 60 / state.step_seconds)))
        self.run.log(event="planned", iterations=state.planned, step_seconds=state.step_seconds)
        self.bar.total = state.planned
        self.bar.refresh()

    def phase_over(self, state: TrainProgress) -> bool:
        return self.finished(state)

    def after_step(self, state: TrainProgress) -> bool:
        """Validate every ``val_every`` iterations and at the last; keep the best weights in ``best.pt``."""
        it = state.iteration
        if it % self.cfg.val_every and it != self.total(state):
            return False
        val = self.ctx.evaluate(self.model, self.val_imgs, **self.val_kw)
        losses = self.ctx.average(state.losses)
        record = {"iteration": it, "train_loss": sum(losses) / len(losses),
                  "lr": self.optimizers["weights"].param_groups[0]["lr"],
                  "val_psnr": val["psnr"], "val_ssim": val["ssim"], "input_psnr": val["input_psnr"],
                  "score": score(val["psnr"], val["ssim"]), "seconds": self.ckpt.seconds(),
                  "cpu_seconds": self.ckpt.cpu_seconds()}
        state.losses = []
        state.history.append(record)
        self.run.log(event="validation", **record)
        self.bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_psnr=f"{val['psnr']:.2f}")
        if state.best is None or record["score"] > state.best["score"]:
            state.best = record
            save_model(self.model, self.run / "best.pt", iteration=it, val_psnr=val["psnr"], val_ssim=val["ssim"])
        return True

    def finish(self, state: TrainProgress) -> dict[str, Any]:
        cfg, run, model, best = self.cfg, self.run, self.model, state.best
        self.ctx.check_replicas(run / "replicas.json", model, best_iteration=best["iteration"])
        write_json(run / "history.json", state.history)
        n_params = count_params(model)
        metrics = {
            "model": cfg.model, "task": self.task, "sigma": self.val_kw["sigma"], "scale": self.val_kw["scale"],
            "filters": cfg.filters if self.genotype is not None else model.channels,
            "params": n_params, "params_m": n_params / 1e6,
            "gflops_256": count_flops(model, (1, self.channels, 256 // self.scale, 256 // self.scale)) / 1e9,
            "best_iteration": best["iteration"], "val_psnr": best["val_psnr"], "val_ssim": best["val_ssim"],
            "input_psnr": best["input_psnr"], "iterations": state.iteration, "rollbacks": state.rollbacks,
            "optimizer": cfg.optimizer, "schedule": cfg.schedule, "step_seconds": state.step_seconds or None,
            "seconds": self.ckpt.seconds(), "cpu_seconds": self.ckpt.cpu_seconds(), **self.facts,
            "convention": dataclasses.asdict(convention_for(self.task, self.scale)),
        }
        write_json(run / "metrics.json", metrics)
        run.log(event="end", **{k: v for k, v in metrics.items() if k != "convention"})
        return metrics


def retrain(cfg: TrainConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False, force: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Train ``Network(genotype, cfg.filters)`` (or DnCNN-17) into run directory ``out``; returns its metrics (also
    ``out/metrics.json``). ``resume`` and ``force`` work as in :func:`hinas.jobs.search.search`; every input is checked
    before ``out`` is touched.
    """
    return fit(RetrainJob(cfg), out, overwrite=overwrite, resume=resume, force=force, progress=progress)

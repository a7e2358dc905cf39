"""The HiNAS search: first-order alternating bi-level optimisation of weights and architecture.

Each step after the warm-up does one Adam step on alphas and betas with a batch
from the architecture split, then one SGD step on the weights with a batch from
the weight split (the authors' order). After every epoch the genotype is
derived and the supernet is validated; from ``select_from`` on, the genotype
with the best score SSIM + PSNR/100 is kept, which stops collapse into
parameter-free cells from winning late in the search. The loop's complete state
is checkpointed (:mod:`hinas.engine.checkpoint`), so an interrupted search resumes exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hinas.data.images import ImageSet, PatchDataset, in_memory, load_images, split_images
from hinas.engine import distributed
from hinas.engine.checkpoint import Progress, loader_generator
from hinas.engine.loop import Job, fit
from hinas.engine.losses import search_lr, weight_optimizer
from hinas.engine.rundir import RunDir
from hinas.engine.settings import SearchConfig
from hinas.errors import CollapseError, ConfigError, RenderError
from hinas.eval.metrics import convention_for
from hinas.eval.scoring import check_measurable, score
from hinas.files import write_json
from hinas.nas.complexity import count_params
from hinas.nas.genotype import Genotype
from hinas.nas.latency import LatencyTable, expected_latency, network_latency
from hinas.nas.space import SearchSpace
from hinas.nas.supernet import Supernet


@dataclass
class SearchResult:
    genotype: Genotype
    best_epoch: int
    history: list[dict[str, Any]]
    run_dir: Path


def collapse_indicators(model: Supernet, genotype: Genotype) -> dict[str, int]:
    """Skip ops in the derived cells, and edges whose strongest op is 'zero' (what DARTS-style collapse looks like)."""
    ops = model.space.ops
    zero = ops.index("zero") if "zero" in ops else None
    strongest = model.alpha_probs().argmax(-1)
    return {
        "skip_ops": genotype.op_counts().get("identity", 0),
        "zero_edges": int((strongest == zero).sum()) if zero is not None else 0,
    }


def _loaders(cfg: SearchConfig, weight_imgs, arch_imgs,
             ctx: distributed.Context) -> tuple[DataLoader, DataLoader, distributed.RankBatches]:
    """The weight and arch loaders (this rank's share of each batch), sharing one sampler so both resume at the same index."""
    space = cfg.space
    length = max(len(weight_imgs), len(arch_imgs)) * cfg.patches_per_image
    if length < cfg.batch:
        raise ConfigError(
            f"search.batch: {cfg.batch} is larger than the {length} patches an epoch draws from each split "
            f"({len(weight_imgs)} weight / {len(arch_imgs)} arch images x patches_per_image {cfg.patches_per_image}); "
            "lower batch or raise patches_per_image"
        )
    sampler = ctx.batches(length, cfg.batch)
    loaders = []
    for i, imgs in enumerate((weight_imgs, arch_imgs)):
        ds = PatchDataset(imgs, cfg.patch, task=space.task, scale=space.scale, sigma=cfg.sigmas, length=length,
                          seed=cfg.seed * 2 + i)
        loaders.append(DataLoader(ds, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
                                  generator=loader_generator(cfg.seed)))
    return loaders[0], loaders[1], sampler


@dataclass
class SearchProgress(Progress):
    epoch: int = 1
    step: int = 0
    """Steps of ``epoch`` already taken."""
    w_losses: list[float] = field(default_factory=list)
    a_losses: list[float] = field(default_factory=list)
    best: dict[str, Any] | None = None
    """``epoch``, ``score`` and ``genotype`` (as JSON data) of the best epoch so far."""
    stopped: str = ""
    """Why the search stopped before its last epoch (collapse), if it did."""

    def position(self) -> str:
        return f"epoch {self.epoch} step {self.step}"


def data_split(cfg: SearchConfig, images: ImageSet) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The weight, architecture and validation images of a search, split by ``split_seed`` (-1: by ``seed``)."""
    return split_images(images, cfg.val_images, cfg.seed if cfg.split_seed < 0 else cfg.split_seed)


class SearchJob(Job[SearchProgress, "SearchResult"]):
    """The search's part of the training loop: two splits, the alternating step, the end-of-epoch selection."""

    kind = "search"
    progress_type = SearchProgress
    cfg: SearchConfig
    latency: LatencyTable | None = None
    """The latency table, where the latency term is on or a table is given."""

    def prepare(self) -> None:
        cfg, space = self.cfg, self.cfg.space
        images = load_images(cfg.data, cfg.data_root or None, channels=space.in_channels)
        weight_imgs, arch_imgs, val_imgs = data_split(cfg, images)
        self.split_sizes = {"weights": len(weight_imgs), "arch": len(arch_imgs), "val": len(val_imgs)}
        weight_imgs, arch_imgs, self.val_imgs = in_memory(weight_imgs), in_memory(arch_imgs), in_memory(val_imgs, cfg.val_crop)
        check_measurable(self.val_imgs, convention_for(space.task, space.scale))
        self.w_loader, self.a_loader, self.sampler = _loaders(cfg, weight_imgs, arch_imgs, self.ctx)
        self.per_epoch = len(self.w_loader)

    def build(self) -> nn.Module:
        return Supernet(self.cfg.space, impl=self.cfg.supernet, checkpoint=self.cfg.checkpoint_cells)

    def make_optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
        cfg = self.cfg
        self.weights, self.arch = model.weight_parameters(), model.arch_parameters()
        return {"weights": weight_optimizer(self.weights, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay),
                "arch": torch.optim.Adam(self.arch, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)}

    def opened(self) -> None:
        """Load (or measure, about two minutes) the latency table where the search uses one."""
        cfg = self.cfg
        if cfg.latency_weight or cfg.latency_target_ms or cfg.latency_table:
            from hinas.infer.latency_table import load_or_measure

            path = cfg.latency_table or self.run / "latency_table.json"
            self.latency = load_or_measure(path, cfg.space, cfg.latency_filters, cfg.latency_size, str(self.device),
                                           log=lambda message: self.run.log(event="latency", message=message),
                                           precision=cfg.latency_precision)

    def latency_loss(self) -> torch.Tensor | None:
        """The architecture loss's latency term (:class:`SearchConfig` ``latency_weight``, ``latency_target_ms``)."""
        cfg = self.cfg
        if self.latency is None or not (cfg.latency_weight or cfg.latency_target_ms):
            return None
        expected = expected_latency(self.latency, cfg.space, self.model.alpha_probs(), self.model.beta_probs())
        if cfg.latency_target_ms:
            return (cfg.latency_weight or 1.0) * torch.relu(expected / cfg.latency_target_ms - 1)
        return cfg.latency_weight * expected.log()

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The architecture step's loss: the restoration loss of an arch batch, plus the latency term if any."""
        loss, extra = self.loss(x, y, self.cfg.loss_scale), self.latency_loss()
        return loss if extra is None else loss + extra

    def start_record(self) -> dict[str, Any]:
        return {"images": self.split_sizes, "steps_per_epoch": self.per_epoch, "params": count_params(self.model)}

    def steps(self, state: SearchProgress) -> tuple[int, int]:
        return (state.epoch - 1) * self.per_epoch + state.step, self.cfg.epochs * self.per_epoch

    def finished(self, state: SearchProgress) -> bool:
        return state.epoch > self.cfg.epochs or bool(state.stopped)

    def checkpoint_due(self, state: SearchProgress) -> bool:
        every = self.cfg.checkpoint_every
        return bool(every) and state.step % every == 0

    def batches(self, state: SearchProgress) -> Iterable[Any]:
        self.model.train()
        for loader in (self.w_loader, self.a_loader):
            loader.dataset.set_epoch(state.epoch)
        self.sampler.start = state.step * self.cfg.batch
        return zip(self.w_loader, self.a_loader)

    def _lr(self, state: SearchProgress, step: int) -> float:
        cfg = self.cfg
        return search_lr(state.epoch - 1 + step / self.per_epoch, cfg.epochs, cfg.lr, cfg.lr_min, cfg.lr_cycle, cfg.lr_power)

    def step(self, state: SearchProgress, batch: Any) -> None:
        """One architecture step on an arch batch (from ``arch_start`` on), then one weight step: the authors' order."""
        (xw, yw), (xa, ya) = batch
        cfg, opts = self.cfg, self.optimizers
        for opt, base in ((opts["weights"], self._lr(state, state.step)), (opts["arch"], cfg.arch_lr)):
            for group in opt.param_groups:
                group["lr"] = base * state.lr_scale
        if state.epoch >= cfg.arch_start:
            state.a_losses.append(self.guarded_step(lambda: self.arch_loss(xa, ya), opts["arch"], self.arch,
                                                    f"arch step at {state.position()}"))
        state.w_losses.append(self.guarded_step(lambda: self.loss(xw, yw, cfg.loss_scale), opts["weights"], self.weights,
                                                f"weight step at {state.position()}", clip=cfg.grad_clip))
        state.step += 1
        self.bar.set_postfix(epoch=state.epoch, loss=f"{state.w_losses[-1]:.4f}", refresh=False)

    def phase_over(self, state: SearchProgress) -> bool:
        return state.step >= self.per_epoch

    def end_phase(self, state: SearchProgress) -> None:
        """Validate, derive, select; the collapse guard may end the search here."""
        cfg, model, space, epoch = self.cfg, self.model, self.cfg.space, state.epoch
        genotype = model.genotype(meta={"epoch": epoch})
        val = self.ctx.evaluate(model, self.val_imgs, task=space.task, sigma=cfg.val_sigma,
                                scale=space.scale if space.task == "sr" else None)
        w_losses, a_losses = self.ctx.average(state.w_losses), self.ctx.average(state.a_losses)
        record = {
            "epoch": epoch, "lr": self._lr(state, self.per_epoch - 1) * state.lr_scale,
            "weight_loss": sum(w_losses) / len(w_losses), "arch_loss": sum(a_losses) / len(a_losses) if a_losses else None,
            "val_psnr": val["psnr"], "val_ssim": val["ssim"], "input_psnr": val["input_psnr"],
            "score": score(val["psnr"], val["ssim"]),
            **collapse_indicators(model, genotype),
            "path": list(genotype.path), "cells": genotype.to_dict()["cells"],
            "alpha": model.alpha_probs().tolist(), "beta": model.beta_probs().tolist(),
            "seconds": self.ckpt.seconds(), "cpu_seconds": self.ckpt.cpu_seconds(),
        }
        if self.latency is not None:
            with torch.no_grad():
                record["expected_latency_ms"] = float(
                    expected_latency(self.latency, space, model.alpha_probs(), model.beta_probs()))
            record["latency_ms"] = network_latency(self.latency, genotype)
        state.history.append(record)
        limit = cfg.collapse_skip_limit
        if limit and epoch >= cfg.arch_start and record["skip_ops"] >= limit:
            state.stopped = f"collapse: {record['skip_ops']} skip ops at epoch {epoch} (collapse_skip_limit {limit})"
        elif epoch >= cfg.select_from and (state.best is None or record["score"] > state.best["score"]):
            state.best = {"epoch": epoch, "score": record["score"], "genotype": genotype.to_dict()}
            genotype.save(self.run / "genotype.json")
        self.run.log(event="epoch", **{k: v for k, v in record.items() if k not in ("alpha", "beta")})
        if state.stopped:
            self.run.log(event="stopped", reason=state.stopped)
        self.bar.set_postfix(epoch=epoch, loss=f"{record['weight_loss']:.4f}", val_psnr=f"{val['psnr']:.2f}")
        state.epoch, state.step, state.w_losses, state.a_losses = epoch + 1, 0, [], []

    def finish(self, state: SearchProgress) -> SearchResult:
        cfg, run, model, space = self.cfg, self.run, self.model, self.cfg.space
        chosen, best_epoch = _select(state, space)
        if self.latency is not None:
            chosen.meta.update(latency_meta(self.latency, chosen))
        chosen.save(run / "genotype.json")
        write_json(run / "history.json", state.history)
        _draw(run, chosen, model)
        picked = state.history[best_epoch - 1]
        self.ctx.check_replicas(run / "replicas.json", model, genotype=chosen.to_dict(), best_epoch=best_epoch)
        metrics = {
            "best_epoch": best_epoch, "val_psnr": picked["val_psnr"], "val_ssim": picked["val_ssim"], "score": picked["score"],
            "skip_ops": picked["skip_ops"], "epochs": cfg.epochs, "epochs_run": len(state.history),
            "stopped_early": state.stopped or None, "rollbacks": state.rollbacks, "steps": len(state.history) * self.per_epoch,
            "seconds": self.ckpt.seconds(), "cpu_seconds": self.ckpt.cpu_seconds(), **self.facts,
            "supernet_params": count_params(model),
            **{k: v for k, v in chosen.meta.items() if k.startswith("latency")},
            "genotype": chosen.to_dict(), "convention": dataclasses.asdict(convention_for(space.task, space.scale)),
        }
        write_json(run / "metrics.json", metrics)
        run.log(event="end", best_epoch=best_epoch, seconds=metrics["seconds"])
        return SearchResult(chosen, best_epoch, state.history, run.path)


def search(cfg: SearchConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False, force: bool = False,
           progress: bool = True) -> SearchResult:
    """Run a search into run directory ``out``; returns the selected genotype (also in ``out/genotype.json``).

    ``resume`` continues the interrupted run in ``out`` exactly where its checkpoint left it; settings or code
    that differ from the run's are refused unless ``force``. Every input is checked before ``out`` is touched.
    """
    return fit(SearchJob(cfg), out, overwrite=overwrite, resume=resume, force=force, progress=progress)


def latency_meta(table: LatencyTable, genotype: Genotype) -> dict[str, Any]:
    """The derived network's predicted latency and where it holds, as genotype files and metrics carry it."""
    env = table.env
    where = (f"F={table.space.filters}, {env['size']}x{env['size']}, {env['device_name']} ({env['device']}), "
             f"{env['precision']}, {env['threads']} thread(s), torch {env['torch']}")
    return {"latency_ms": round(network_latency(table, genotype), 2), "latency_for": where}


def _select(state: SearchProgress, space: SearchSpace) -> tuple[Genotype, int]:
    """The best epoch from ``select_from`` on; without one, the last epoch that did not collapse."""
    if state.best is not None:
        return Genotype.from_dict(state.best["genotype"]), state.best["epoch"]
    kept = state.history[:-1] if state.stopped else state.history
    if not kept:
        raise CollapseError(f"{state.stopped}, before any genotype could be kept; lower arch_lr, start the "
                            "architecture updates later (arch_start) or raise collapse_skip_limit")
    last = kept[-1]
    cells = [[[(e["op"], e["input"]) for e in node] for node in cell] for cell in last["cells"]]
    return Genotype(space, tuple(last["path"]), cells, {"epoch": last["epoch"]}), last["epoch"]


def _draw(run: RunDir, genotype: Genotype, model: Supernet) -> None:
    """Drawings are a convenience: a missing Graphviz is logged, never fatal to a finished search."""
    import matplotlib.pyplot as plt

    from hinas.viz.plots import plot_alphas, plot_betas
    from hinas.viz.render import draw_genotype

    try:
        draw_genotype(genotype, run / "genotype")
    except RenderError as err:
        run.log(event="warning", message=str(err))
    for name, fig in (("alphas.png", plot_alphas(model.space, model.alpha_probs())),
                      ("betas.png", plot_betas(model.space, model.beta_probs(), genotype.path))):
        fig.savefig(run / name, dpi=110, bbox_inches="tight")
        plt.close(fig)

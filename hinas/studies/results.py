"""The results experiments: which runs make up the report, running the missing ones, and collecting them into tables.

The grid is data (:func:`grid`): HiNAS searches per sharing variant and seed, each genotype retrained at every
noise level with the same budget as random architectures from the same space and a DnCNN-17 trained by the
same loop; for SR searches (per scale, or at one scale as in the paper) against random architectures and bicubic.
A profile (:data:`PROFILES`) sizes it, from ``smoke`` (minutes, for CI) to ``equal-time`` (hours, resumed across
sessions). :func:`run_grid` runs what is missing (a finished run directory is skipped, an interrupted one resumed,
one recorded in a committed folder restored from it: :func:`sync_records`),
:func:`collect` reads the run directories back into plain rows, and :mod:`hinas.studies.report` writes RESULTS.md
from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from hinas.engine.settings import EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.files import write_json
from hinas.hardware import machine
from hinas.nas.complexity import count_flops, count_params
from hinas.nas.genotype import Genotype, compare, random_genotype
from hinas.nas.latency import LatencyTable, network_latency, random_of_latency
from hinas.studies.aggregate import bootstrap_difference, spread

LATENCY_TABLE = "latency/latency_table.json"
"""The latency table of a profile with latency targets, in its runs folder (measured once, by the ``table`` job)."""
LATENCY_MEASURED = "latency/measured"
"""The ``measure`` job's folder: every latency-level model's measured latency (``latency.json``), timed together."""
LATENCY_MATCH = 0.1
"""Random architectures count as of a searched network's latency within this fraction of its predicted latency."""

VARIANTS = ("lwas", "tied", "independent")
"""Cell sharing of a HiNAS search: per layer (the paper), one cell for the whole net, one per (layer, width)."""


@dataclass(frozen=True)
class Profile:
    """How large the experiments are; every model of a task gets the same retraining budget."""

    search_preset: str
    train_preset: str
    denoise_search_data: str
    denoise_data: str
    sr_data: str
    denoise_sets: tuple[str, ...]
    sr_sets: tuple[str, ...]
    order: tuple[tuple[str, int], ...] = (("denoise", 25), ("denoise", 50), ("sr", 2), ("sr", 4))
    """(task, noise level or scale) blocks in the order they run, so that a deadline cuts the last ones."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the ``lwas`` searches (denoising, and SR at each scale)."""
    sr_search_scale: int = 0
    """The one scale the SR searches run at, their genotypes (and the random ones) retrained at every scale of
    ``order``, as the paper searches at x4 only; 0: a search per scale."""
    variant_seeds: int = 1
    """How many of ``seeds`` the ``tied`` and ``independent`` searches take."""
    randoms: int = 3
    sr_patch: int = 64
    """High-resolution side of SR training patches (the low-resolution side is this over the scale)."""
    search: tuple[str, ...] = ()
    """Overrides of every search (on top of ``search_preset``)."""
    search_sr: tuple[str, ...] = ()
    """Further overrides of the SR searches."""
    train: tuple[str, ...] = ()
    train_sr: tuple[str, ...] = ()
    train_sr_at: tuple[tuple[int, tuple[str, ...]], ...] = ()
    """(scale, overrides) applied after ``train_sr`` to the retraining at that scale only."""
    latency_size: int = 512
    """Side of the (output) image at which FLOPs and latency are measured."""
    latency_repeats: int = 3
    latency_targets: tuple[tuple[float, int], ...] = ()
    """Latency-aware ``lwas`` searches (seed ``seeds[0]``) retrained at the first noise level: (target in ms, how many
    random architectures of the found network's predicted latency, within ``LATENCY_MATCH``, are retrained beside it)."""
    latency_table_size: int = 256
    """Side of the input the latency table (``LATENCY_TABLE``) and every model's measured latency are for."""
    latency_precision: str = "float32"
    """What derived networks' inference form computes in for the table and the measured latencies (DnCNN-17 takes
    its fastest form whatever this is)."""
    hardware: str = "2 shared CPU cores (no GPU), one thread per process"

    def sr_searched_at(self, scale: int) -> int:
        """The scale of the SR searches whose genotypes are retrained at ``scale``."""
        return self.sr_search_scale or scale

    def retrain_overrides(self, task: str, level: int) -> tuple[str, ...]:
        """The settings every retrain of one task and noise level or scale shares, over ``train_preset`` (later win)."""
        if task == "denoise":
            return (f"data={self.denoise_data}", f"sigma={level}", *self.train)
        return (f"data={self.sr_data}", f"patch={self.sr_patch // level}", f"scale={level}", *self.train, *self.train_sr,
                *dict(self.train_sr_at).get(level, ()))

    def sr_train_data(self, scale: int) -> str:
        """The images SR networks are retrained on at ``scale`` (``train_sr_at`` may name others than ``sr_data``)."""
        return resolve(TrainConfig, self.train_preset, overrides=list(self.retrain_overrides("sr", scale))).data

    @property
    def sigmas(self) -> tuple[int, ...]:
        """Noise levels of the report; the denoising searches train on all of them at once."""
        return tuple(sorted(level for task, level in self.order if task == "denoise"))


CPU_DEMO_BEFORE_SEARCH = ("optimizer=sgd", "lr=0.025", "lr_min=0.001", "grad_clip=0")
CPU_DEMO_BEFORE_TRAIN = ("optimizer=sgd", "lr=0.02", "schedule=poly", "pixel_loss=mse", "ssim_weight=0.6")
"""The ``cpu-demo`` recipes the ``cpu`` profile of RESULTS.md ran with, before the recipe study changed the preset."""

LATENCY_SEARCH = ("patches_per_image=1", "epochs=20", "arch_start=6", "select_from=10", "val_images=6")
"""Searches of ``latency``: about 10 minutes of one core each."""
EQUAL_TIME_SEARCH = ("patches_per_image=2", "split_seed=0", *LATENCY_SEARCH[1:])
"""Searches of ``equal-time``: twice the steps of ``LATENCY_SEARCH`` (about 20 minutes of one core), every seed
validated on the same 6 images. In the first equal-time grid (2026-12-02, one patch per image, the split seeded by
the search) 2 of 10 denoising supernets ended less than 5 dB above their noisy input (4.1 and 3.9 dB, both seed 2);
with twice the steps seed 2 still plateaued at 4.1 dB, because its validation crops are harder to denoise (see
``SearchConfig.split_seed``)."""
EQUAL_TIME_SEARCH_SR = ("space.in_channels=3", "space.layers=2", "pixel_loss=l1", "ssim_weight=0.6", "val_crop=0",
                        "patches_per_image=12")
"""Further settings of the ``equal-time`` SR searches: T91 has 91 images, and at 2 patches per image (about 200 weight
steps) the x4 supernet ended level with bicubic (26.86 against 26.87 dB), where a random network needs about 800
steps of the same batch to pass it by 0.8 dB."""
EQUAL_TIME_TRAIN_X4 = ("data=BSD500-train", "patch=32", "val_crop=0")
"""``equal-time``'s x4 retraining: 32x32 low-resolution patches (128 high), which T91 cannot give (its smallest images
are 78 pixels), from the 200 BSDS500 training photos (none in B100), validated on whole images. Measured on
2026-12-07: with T91's 16x16 patches, random-4 beat bicubic on Set5 by 2.15 dB when run in 24-pixel tiles yet fell
0.4 dB below it on Set14 whole (8 of 14 images worse); the networks had learnt to lean on the zero padding of patches
that small, and 128-pixel validation crops did not show it. The same genotype retrained this way: Set5 +1.45 dB,
Set14 +1.00 dB over bicubic on whole images, no image worse. x2's 32x32 patches from T91 (64 high) already gave
networks that beat bicubic on every test image."""
EQUAL_TIME_TRAIN = ("minutes=4", "iterations=1000000", "val_every=400")
"""Every denoising network of ``equal-time`` and ``latency`` gets 4 minutes of one core's CPU time, whatever its speed
(``equal-time``'s SR networks 8: at 4, a random x4 network was 0.08 dB below bicubic on B100, at 8 1.0 dB above)."""

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        search_preset="smoke", train_preset="smoke", denoise_search_data="embedded-train", denoise_data="embedded-train",
        sr_data="embedded-train", denoise_sets=("embedded-val",), sr_sets=("embedded-val",), order=(("denoise", 25), ("sr", 2)),
        seeds=(0,), randoms=2, sr_patch=32, search_sr=("space.in_channels=3", "val_crop=48"),
        train_sr=("val_crop=48", "pixel_loss=l1"), latency_size=64, latency_repeats=1, latency_targets=((1.0, 2),),
        latency_table_size=32,
    ),
    "cpu": Profile(
        search_preset="cpu-demo", train_preset="cpu-demo", denoise_search_data="BSD500-train", denoise_data="Train400",
        sr_data="T91", denoise_sets=("Set12", "BSD68"), sr_sets=("Set5", "Set14", "B100"),
        order=(("sr", 4), ("denoise", 25), ("sr", 2), ("denoise", 50)),
        search=("patches_per_image=1", "epochs=5", "arch_start=2", "select_from=3", "lr_cycle=5",
                *CPU_DEMO_BEFORE_SEARCH),
        search_sr=("space.in_channels=3", "space.layers=2", "pixel_loss=l1", "ssim_weight=0.6", "val_crop=0"),
        train=("iterations=200", "val_every=100", *CPU_DEMO_BEFORE_TRAIN), train_sr=("pixel_loss=l1", "rescale=[]"),
    ),
    "equal-time": Profile(
        search_preset="cpu-demo", train_preset="cpu-demo", denoise_search_data="BSD500-train", denoise_data="Train400",
        sr_data="T91", denoise_sets=("Set12", "BSD68"), sr_sets=("Set5", "Set14", "B100"),
        order=(("denoise", 25), ("denoise", 50), ("sr", 2), ("sr", 4)), seeds=(0, 1, 2, 3, 4), variant_seeds=3, randoms=5,
        sr_search_scale=4, search=EQUAL_TIME_SEARCH, search_sr=EQUAL_TIME_SEARCH_SR,
        train=EQUAL_TIME_TRAIN, train_sr=("pixel_loss=l1", "rescale=[]", "minutes=8"), train_sr_at=((4, EQUAL_TIME_TRAIN_X4),),
    ),
    "latency": Profile(
        search_preset="cpu-demo", train_preset="cpu-demo", denoise_search_data="BSD500-train", denoise_data="Train400",
        sr_data="T91", denoise_sets=("Set12", "BSD68"), sr_sets=(), order=(("denoise", 25),), seeds=(0,), variant_seeds=0,
        randoms=0, search=LATENCY_SEARCH, train=EQUAL_TIME_TRAIN, latency_size=256, latency_targets=((140, 5), (165, 5)),
        latency_precision="bf16",
    ),
}
"""``smoke`` builds in a few minutes for CI; ``cpu`` is what RESULTS.md reported first (one seed, 200 iterations);
``equal-time`` answers the search question with power: 5 search seeds against 5 random architectures and
DnCNN-17, every network of a task retrained for the same CPU time (not the same iterations: 4 minutes of one core
for denoising, 8 for SR), SR searched at x4 only and its genotypes retrained at x2 and x4 (the paper's protocol),
about 10 hours of one core in all (``run_grid`` resumes across sessions); ``latency`` is issue 15's PSNR-latency
front at sigma 25: an unconstrained search and two latency targets (the tighter with 5 random architectures of its
latency) beside DnCNN-17, on the same budget, latency measured at 256x256 (about 45 minutes on two cores)."""


@dataclass(frozen=True)
class Job:
    """One run of the grid: ``kind`` is search, genotype (a random draw), retrain or evaluate; ``out`` its directory."""

    kind: str
    out: str
    cfg: Any = None
    needs: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    exclusive: bool = False
    """Runs alone: it times networks, and a job on the other core slows them (see :mod:`hinas.infer.latency_table`)."""


def level_label(task: str, level: int) -> str:
    """How tables name a noise level or scale: ``sigma 25``, ``x4``."""
    return f"sigma {level}" if task == "denoise" else f"x{level}"


def _level(task: str, level: int) -> str:
    return f"sigma{level}" if task == "denoise" else f"x{level}"


def grid(profile: Profile, data_root: str = "") -> list[Job]:
    """Every run of the report in the order it is run (``profile.order``); directories are relative to the runs folder."""
    p = profile
    root = [f"data_root={data_root}"] if data_root else []
    jobs: list[Job] = []
    table = None
    if p.latency_targets:  # first, alone, while the machine is idle
        space = resolve(SearchConfig, p.search_preset, overrides=list(p.search)).space
        filters = resolve(TrainConfig, p.train_preset, overrides=list(p.train)).filters
        table = Job("table", str(Path(LATENCY_TABLE).parent), (space, filters, p.latency_table_size, p.latency_precision),
                    exclusive=True)
        jobs.append(table)
    for task, level in p.order:
        if task == "denoise" and not any(j.kind == "search" and j.out.startswith("search/denoise") for j in jobs):
            jobs += _denoise_searches(p, root, table)
        if task == "sr" and not (p.sr_search_scale and any(j.out.startswith("search/sr") for j in jobs)):
            jobs += _sr_search(p, root, p.sr_searched_at(level))
        for name, info, genotype, dep in _models(p, task, level):
            train_out = f"retrain/{task}-{_level(task, level)}/{name}"
            cfg = resolve(TrainConfig, p.train_preset, overrides=[*root, *genotype, *p.retrain_overrides(task, level)])
            info = {**info, "task": task, "level": level, "model": name}
            jobs.append(Job("retrain", train_out, cfg, (dep,) if dep else (), info))
            sets = p.denoise_sets if task == "denoise" else p.sr_sets
            eval_cfg = resolve(EvalConfig, overrides=[*root, f"model={train_out}", f"sets={list(sets)}", f"sigmas=[{level}]"])
            jobs.append(Job("evaluate", f"evaluate/{task}-{_level(task, level)}/{name}", eval_cfg, (train_out,), info))
    if p.latency_targets:
        timed = tuple(j.out for j in jobs
                      if j.kind == "evaluate" and (j.info["task"], j.info["level"]) == ("denoise", p.sigmas[0]))
        jobs.append(Job("measure", LATENCY_MEASURED, (p.latency_table_size, p.latency_precision), timed, exclusive=True))
    return jobs


def _denoise_searches(p: Profile, root: list[str], table: Job | None = None) -> list[Job]:
    """One search per sharing variant (``p.seeds`` of them for lwas) over all of ``p.sigmas``, and the random draws;
    with ``table`` (the latency-table job), the latency-target searches and their random architectures too."""
    jobs = []
    for variant in VARIANTS:
        for seed in p.seeds if variant == "lwas" else p.seeds[:p.variant_seeds]:
            cfg = resolve(SearchConfig, p.search_preset, overrides=[
                *root, f"data={p.denoise_search_data}", f"sigmas={list(p.sigmas)}", f"val_sigma={p.sigmas[0]}", f"seed={seed}",
                f"space.sharing={variant}", *p.search])
            jobs.append(Job("search", f"search/denoise-{variant}-s{seed}", cfg))
    space = jobs[0].cfg.space
    jobs += [Job("genotype", f"genotype/denoise-random-{i}", (space, i)) for i in range(p.randoms)]
    if table is not None:  # the latency-target searches read the table the ``table`` job measures
        for target, randoms in p.latency_targets:
            found = f"search/denoise-lat{target:g}"
            jobs.append(Job("search", found, replace(jobs[0].cfg, latency_target_ms=target, latency_table=LATENCY_TABLE,
                                                     latency_filters=table.cfg[1], latency_size=p.latency_table_size,
                                                     latency_precision=p.latency_precision),
                            (table.out,)))
            jobs += [Job("genotype", f"genotype/denoise-lat{target:g}-random-{i}", (space, i, found), (found,))
                     for i in range(randoms)]
    return jobs


def _sr_search(p: Profile, root: list[str], scale: int) -> list[Job]:
    """One ``lwas`` search per seed at ``scale``, and the random draws."""
    cfgs = [resolve(SearchConfig, p.search_preset, overrides=[
        *root, f"data={p.sr_data}", "space.task=sr", f"space.scale={scale}", f"patch={p.sr_patch // scale}", f"seed={seed}",
        *p.search, *p.search_sr]) for seed in p.seeds]
    return [*[Job("search", f"search/sr-x{scale}-s{seed}", cfg) for seed, cfg in zip(p.seeds, cfgs)],
            *[Job("genotype", f"genotype/sr-x{scale}-random-{i}", (cfgs[0].space, i)) for i in range(p.randoms)]]


def _models(p: Profile, task: str, level: int) -> list[tuple[str, dict[str, Any], list[str], str]]:
    """(name, description, retrain overrides, the run it needs) of every model retrained at one noise level or scale."""
    if task == "sr":
        searched = p.sr_searched_at(level)
        models = [(f"hinas-lwas-s{seed}", {"family": "hinas", "variant": "lwas", "seed": seed},
                   [f"genotype=search/sr-x{searched}-s{seed}"], f"search/sr-x{searched}-s{seed}") for seed in p.seeds]
        prefix = f"genotype/sr-x{searched}-random"
    else:
        models = []
        for variant in VARIANTS:
            for seed in p.seeds if variant == "lwas" else p.seeds[:p.variant_seeds]:
                found = f"search/denoise-{variant}-s{seed}"
                models.append((f"hinas-{variant}-s{seed}", {"family": "hinas", "variant": variant, "seed": seed},
                               [f"genotype={found}"], found))
        prefix = "genotype/denoise-random"
        for target, randoms in p.latency_targets if level == p.sigmas[0] else ():
            found, tag = f"search/denoise-lat{target:g}", f"lat{target:g}"
            models.append((f"hinas-{tag}", {"family": "hinas", "variant": tag, "seed": p.seeds[0], "target_ms": target},
                           [f"genotype={found}"], found))
            models += [(f"{tag}-random-{i}", {"family": "random-lat", "variant": f"random-{tag}", "seed": i, "target_ms": target},
                        [f"genotype=genotype/denoise-{tag}-random-{i}/genotype.json"], f"genotype/denoise-{tag}-random-{i}")
                       for i in range(randoms)]
    models += [(f"random-{i}", {"family": "random", "variant": "random", "seed": i}, [f"genotype={prefix}-{i}/genotype.json"],
                f"{prefix}-{i}") for i in range(p.randoms)]
    if task == "denoise":
        models.append(("dncnn-17", {"family": "dncnn", "variant": "dncnn", "seed": 0}, ["model=dncnn"], ""))
    return models


# --- running -----------------------------------------------------------------------------------------


def done(runs: Path, job: Job) -> bool:
    """A run is finished when it wrote its result (an evaluation also its complexity and latency)."""
    d = runs / job.out
    if job.kind == "genotype":
        return (d / "genotype.json").is_file()
    if job.kind == "table":
        return (runs / LATENCY_TABLE).is_file()
    if job.kind == "measure":  # every model it times, timed in one go (a model added later has all timed again)
        return set(job.needs) <= set(_measured(runs))
    return (d / "metrics.json").is_file() and (job.kind != "evaluate" or (d / "complexity.json").is_file())


RECORDED = ("*.json", "config.yaml", "log.jsonl", "per_image.csv")
"""What a job's record keeps of its finished run directory: its settings and every result the report reads, no weights."""
WEIGHTLESS = ("search", "genotype", "table")
"""Kinds of job whose record is all that the jobs needing them read (a genotype, a latency table): restored alone."""


def record(runs: Path, records: Path, job: Job, patterns: tuple[str, ...] = RECORDED) -> None:
    """Copy a finished job's results (:data:`RECORDED`, not its checkpoints) from ``runs`` into ``records``: committed,
    they survive a fresh checkout, which run directories (kept out of git for their weights) do not. Swapped
    around, with every file, it restores them."""
    src, dst = runs / job.out, records / job.out
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for path in src.glob(pattern):
            if path.is_file():
                shutil.copy2(path, dst / path.name)


def sync_records(runs: str | Path, records: str | Path, profile: Profile, data_root: str = "") -> list[Job]:
    """Record every finished job not yet recorded, and restore into ``runs`` the recorded jobs it lacks; returns the
    restored ones. A retrain or evaluation is restored only when every job downstream of it is recorded too, as
    those read its weights, which records do not hold: otherwise it runs again."""
    runs, records = Path(runs), Path(records)
    jobs = grid(profile, data_root)
    for job in jobs:
        if done(runs, job) and not done(records, job):
            record(runs, records, job)
    recorded = {j.out for j in jobs if done(records, j)}
    downstream: dict[str, set[str]] = {j.out: set() for j in jobs}
    for job in reversed(jobs):  # grid order puts a job after what it needs, so its dependents are complete here
        for need in job.needs:
            downstream[need] |= {job.out, *downstream[job.out]}
    restored = [j for j in jobs if j.out in recorded and not done(runs, j)
                and (j.kind in WEIGHTLESS or downstream[j.out] <= recorded)]
    for job in restored:
        record(records, runs, job, ("*",))
    return restored


def run_job(runs: str, job: Job, profile: Profile) -> str:
    """Run one job in this process at one thread (the machine is shared).

    An interrupted search or retrain resumes (forced: the grid's settings are fixed, so only a change of the
    package's code can differ, and the grid is meant to survive edits that do not touch training).
    """
    from hinas.jobs.evaluate import evaluate_run
    from hinas.jobs.retrain import retrain
    from hinas.jobs.search import search

    torch.set_num_threads(1)
    d = Path(runs) / job.out
    started = (d / "checkpoint.pt").is_file()
    if job.kind == "table":
        from hinas.infer.latency_table import load_or_measure

        space, filters, size, precision = job.cfg
        load_or_measure(Path(runs) / LATENCY_TABLE, space, filters, size, precision=precision)
    elif job.kind == "measure":
        size, precision = job.cfg
        evaluated = {j.out: j for j in grid(profile) if j.kind == "evaluate"}
        d.mkdir(parents=True, exist_ok=True)  # models of other targets (other DVC experiments) keep their times
        write_json(d / "latency.json", {**_measured(Path(runs)), **measured_latencies(
            {out: Path(runs) / evaluated[out].cfg.model / "best.pt" for out in job.needs}, size, precision)})
    elif job.kind == "genotype" and len(job.cfg) == 3:  # random, of a searched network's predicted latency
        space, index, found = job.cfg
        table = _table(Path(runs))
        target = network_latency(table, Genotype.load(Path(runs) / found / "genotype.json"))
        random_of_latency(table, target, index, LATENCY_MATCH).save(d / "genotype.json")
    elif job.kind == "genotype":
        space, seed = job.cfg
        random_genotype(space, seed).save(d / "genotype.json")
    elif job.kind == "search":
        cfg = replace(job.cfg, latency_table=str(Path(runs) / job.cfg.latency_table)) if job.cfg.latency_table else job.cfg
        search(cfg, d, resume=started, force=started, overwrite=d.is_dir() and not started, progress=False)
    elif job.kind == "retrain":
        cfg = replace(job.cfg, genotype=str(Path(runs) / job.cfg.genotype)) if job.cfg.genotype else job.cfg
        retrain(cfg, d, resume=started, force=started, overwrite=d.is_dir() and not started, progress=False)
    else:
        cfg = replace(job.cfg, model=str(Path(runs) / job.cfg.model))
        if not (d / "metrics.json").is_file():
            evaluate_run(cfg, d, overwrite=d.is_dir(), progress=False)
        write_json(d / "complexity.json",
                   complexity_and_latency(Path(cfg.model) / "best.pt", profile.latency_size, profile.latency_repeats))
    return job.out


def complexity_and_latency(checkpoint: Path, size: int, repeats: int) -> dict[str, Any]:
    """Parameters, FLOPs and latency for a ``size`` x ``size`` output at one thread, in the form evaluation runs.

    A derived network runs in its inference form (:class:`hinas.infer.backends.InferenceModel`, eager PyTorch),
    DnCNN as trained (eval mode). Latency is the median wall time of ``repeats`` runs after a warm-up, and
    the median CPU time of the process: on a shared machine the CPU time is the steadier figure.
    """
    from hinas.hardware import keep_freed_memory
    from hinas.infer.backends import InferenceModel
    from hinas.nas.network import Network, load_model

    keep_freed_memory()
    torch.set_num_threads(1)
    net = load_model(checkpoint).eval()
    shape = (1, net.in_channels, size // net.scale, size // net.scale)
    runner = InferenceModel(net) if isinstance(net, Network) else net
    x = torch.rand(shape)
    walls, cpus = [], []
    with torch.inference_mode():
        runner(x)
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            runner(x)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return {"params": count_params(net), "flops": count_flops(net, shape), "input": list(shape), "threads": 1,
            "form": "inference (torch)" if isinstance(net, Network) else "as trained (eval)",
            "latency_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "repeats": repeats}


def measured_latencies(checkpoints: dict[str, Path], size: int, precision: str, rounds: int = 10) -> dict[str, dict[str, Any]]:
    """Milliseconds for one ``size`` x ``size`` input on the latency table's clock at one thread: a derived network in
    its inference form in ``precision`` (what the table predicts), DnCNN in each plain form
    (:func:`~hinas.infer.latency_table.plain_forms`), its best form counting. Every form of every model is timed once
    per round, round after round, and keeps its fastest: interleaved, so that a disturbance falls on all alike (one
    model timed 5 times in a row, then the next, measured the same architecture up to 28% apart). Each timed run
    follows a warm-up run of its own, as every entry of the latency table does, so that what is measured and what
    the table predicts share one convention (caches warm with the model's weights)."""
    from hinas.hardware import keep_freed_memory
    from hinas.infer.backends import InferenceModel
    from hinas.infer.latency_table import fastest_ms, plain_forms
    from hinas.nas.network import Network, load_model

    keep_freed_memory()
    torch.set_num_threads(1)
    forms: dict[tuple[str, str], Any] = {}
    inputs: dict[str, torch.Tensor] = {}
    for name, checkpoint in checkpoints.items():
        net = load_model(checkpoint).eval()
        inputs[name] = torch.rand(1, net.in_channels, size // net.scale, size // net.scale)
        runners = ({f"inference form, {precision}": InferenceModel(net, precision=precision)} if isinstance(net, Network)
                   else plain_forms(net))
        forms.update({(name, form): run for form, run in runners.items()})
    best = {key: float("inf") for key in forms}
    for _ in range(rounds):
        for (name, form), run in forms.items():
            best[name, form] = min(best[name, form], fastest_ms(run, inputs[name], 1))
    out = {}
    for name in checkpoints:
        timed = {form: ms for (n, form), ms in best.items() if n == name}
        form = min(timed, key=timed.__getitem__)
        out[name] = {"size": size, "ms": timed[form], "form": form, "forms": timed, "rounds": rounds}
    return out


def run_grid(runs: str | Path, profile: Profile, *, data_root: str = "", workers: int = 2, deadline: float | None = None,
             records: str | Path | None = None, mix_machines: bool = False, log: Callable[[str], None] = print) -> list[Job]:
    """Run every unfinished job of the grid, ``workers`` processes at a time, each as soon as what it needs is done.

    Jobs start in grid order and none starts after ``deadline`` (a ``time.time()``), so a budget cuts the
    last blocks of ``profile.order``; rerunning resumes. A failed job is logged and what needs it skipped.
    With ``records`` (a folder kept in git), every finished job is recorded there as it ends and what ``runs``
    lacks is restored from it first (:func:`sync_records`), so a fresh checkout resumes the grid.
    Unless ``mix_machines``, the retrains of a noise level or scale already retrained on another machine wait for
    it (:func:`levels_elsewhere`), with what needs them: their CPU-time budgets are equal work only on one machine.
    Returns the jobs left undone (failed ones first, held ones last).
    """
    runs = Path(runs)
    jobs = grid(profile, data_root)
    if records is not None:
        for job in sync_records(runs, records, profile, data_root):
            log(f"restored {job.out} from {records}")

    def finish(job: Job, start: float) -> None:
        if records is not None:
            record(runs, Path(records), job)
        log(f"done  {job.out} ({time.time() - start:.0f} s)")

    pending = [j for j in jobs if not done(runs, j)]
    waits: list[Job] = []
    if not mix_machines:
        for (task, level), ran_on in levels_elsewhere(jobs, [runs] if records is None else [runs, Path(records)]).items():
            level_waits = [j for j in pending if j.kind == "retrain" and (j.info["task"], j.info["level"]) == (task, level)]
            if level_waits:
                log(f"held  {task} {level_label(task, level)} ({len(level_waits)} retrains): begun on {ran_on}, "
                    f"not on this {machine()}")
            waits += level_waits
    kept = _without_dependents(pending, *waits)
    held, pending = [j for j in pending if j not in kept], kept
    finished = {j.out for j in jobs if done(runs, j)} | {""}
    if workers <= 1:
        while pending and (deadline is None or time.time() < deadline):
            job = pending.pop(0)
            start = time.time()
            run_job(str(runs), job, profile)
            finish(job, start)
        return pending + held
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    os.environ.update(env)  # inherited by the spawned workers before torch loads there
    running: dict[Future, tuple[Job, float]] = {}
    failed: list[Job] = []
    with fresh_process_pool(workers) as pool:
        while running or (pending and (deadline is None or time.time() < deadline)):
            ready_jobs = [j for j in pending if all(n in finished for n in j.needs)]
            late = deadline is not None and time.time() >= deadline
            for job in [] if late else startable(ready_jobs, [j for j, _ in running.values()], workers):
                pending.remove(job)
                running[pool.submit(run_job, str(runs), job, profile)] = (job, time.time())
                log(f"start {job.out}")
            if not running:
                raise RuntimeError(f"jobs wait on runs that never finish: {[j.out for j in pending]}")
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in ready:
                job, start = running.pop(fut)
                if fut.exception() is not None:  # report it, drop what needs it, keep the rest of the grid going
                    log(f"FAILED {job.out}: {type(fut.exception()).__name__}: {fut.exception()}")
                    failed.append(job)
                    pending = _without_dependents(pending, job)
                    continue
                finished.add(job.out)
                finish(job, start)
    return failed + pending + held


def levels_elsewhere(jobs: list[Job], folders: list[Path], here: str | None = None) -> dict[tuple[str, int], str]:
    """The (task, level) blocks of ``jobs`` begun on a machine other than ``here`` (:func:`hinas.hardware.machine` by
    default), each with that machine: a finished retrain in one of ``folders`` (runs, records) ran there. Why: a
    retraining budget is CPU time, and a bf16 AVX-512 CPU takes 2-4x the steps of an AVX2 one in it, so networks of
    one level retrained on two machines would differ by the machine, not the architecture; a grid resumed on whichever
    machine a session gets compares like with like when each level is finished where it began."""
    here = here or machine()
    begun: dict[tuple[str, int], str] = {}
    for job in (j for j in jobs if j.kind == "retrain"):
        for folder in folders:
            if done(folder, job):
                ran_on = json.loads((folder / job.out / "metrics.json").read_text()).get("machine")
                if ran_on and ran_on != here:
                    begun.setdefault((job.info["task"], job.info["level"]), ran_on)
    return begun


def fresh_process_pool(workers: int) -> ProcessPoolExecutor:
    """Workers that each run one job and exit, so no job's result depends on what an earlier one did in its process
    (its freed memory, which :func:`hinas.hardware.keep_freed_memory` keeps, moved bf16 losses in their last digits).
    A worker start costs seconds, a job minutes.
    """
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1)


def startable(ready: list[Job], running: list[Job], workers: int) -> list[Job]:
    """The ready jobs to start now, in grid order, on ``workers`` processes of which ``running`` are busy: an
    exclusive job starts only on an empty machine and nothing starts beside it (a later job never overtakes it)."""
    chosen: list[Job] = []
    for job in ready[: max(0, workers - len(running))]:
        busy = running + chosen
        if any(j.exclusive for j in busy) or (job.exclusive and busy):
            break
        chosen.append(job)
    return chosen


def _without_dependents(pending: list[Job], *dropped: Job) -> list[Job]:
    gone = {job.out for job in dropped}
    for j in pending:  # grid order: a job comes after what it needs
        if gone.intersection(j.needs):
            gone.add(j.out)
    return [j for j in pending if j.out not in gone]


# --- collecting ----------------------------------------------------------------------------------------


def collect(runs: str | Path, profile: Profile, data_root: str = "") -> list[dict[str, Any]]:
    """One row per evaluated model and noise level (or scale): its complexity and PSNR/SSIM per test set.

    Rows of runs not (yet) finished are left out; SR rows get a bicubic row per scale from the input figures.
    """
    runs = Path(runs)
    rows: list[dict[str, Any]] = []
    bicubic: dict[int, dict[str, Any]] = {}
    timed = _measured(runs)
    for job in grid(profile, data_root):
        if job.kind != "evaluate" or not done(runs, job):
            continue
        info = job.info
        metrics = json.loads((runs / job.out / "metrics.json").read_text())
        cx = json.loads((runs / job.out / "complexity.json").read_text())
        trained = json.loads((runs / job.cfg.model / "metrics.json").read_text())
        row = {"task": info["task"], "level": info["level"], "model": info["model"], "family": info["family"],
               "variant": info["variant"], "seed": info["seed"], "params": cx["params"], "gflops": cx["flops"] / 1e9,
               "latency_s": cx["latency_s"], "cpu_s": cx["cpu_s"], "train_s": trained["seconds"],
               "iterations": trained["iterations"], "machine": trained.get("machine")}
        if job.out in timed:
            row.update(latency_ms=timed[job.out]["ms"], latency_form=timed[job.out]["form"], target_ms=info.get("target_ms"),
                       predicted_ms=_predicted(runs, job.cfg.model))
        for r in metrics["results"]:
            row[f"{r['set']}/psnr"], row[f"{r['set']}/ssim"] = r["psnr"], r["ssim"]
            if info["task"] == "sr":
                bicubic.setdefault(info["level"], {"task": "sr", "level": info["level"], "model": "bicubic", "family": "bicubic",
                                                   "variant": "bicubic", "seed": 0, "params": 0})
                bicubic[info["level"]][f"{r['set']}/psnr"] = r["input_psnr"]
                bicubic[info["level"]][f"{r['set']}/ssim"] = r["input_ssim"]
        rows.append(row)
    return sorted(rows + list(bicubic.values()), key=lambda r: (r["task"] != "denoise", r["level"]))  # stable: grid order within


def _measured(runs: Path) -> dict[str, dict[str, Any]]:
    """The ``measure`` job's latencies by evaluation run (empty before it ran)."""
    path = runs / LATENCY_MEASURED / "latency.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _table(runs: Path) -> LatencyTable:
    return LatencyTable.from_dict(json.loads((runs / LATENCY_TABLE).read_text()))


def _predicted(runs: Path, model: str) -> float | None:
    """The latency table's prediction for a retrained derived network (``None`` for DnCNN, without a table, or for a
    genotype of another space or sharing variant than the table was measured for)."""
    path = runs / model / "genotype.json"
    if not path.is_file() or not (runs / LATENCY_TABLE).is_file():
        return None
    table, genotype = _table(runs), Genotype.load(path)
    return network_latency(table, genotype) if genotype.space.replace(filters=table.space.filters) == table.space else None


def selected_epoch(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finished search's metrics and the history record of the epoch whose genotype it selected."""
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    return metrics, next(h for h in history if h["epoch"] == metrics["best_epoch"])


def search_rows(runs: str | Path, profile: Profile, data_root: str = "") -> list[dict[str, Any]]:
    """One row per finished search: wall time, steps, the selected epoch, its supernet validation PSNR beside the degraded
    input's (a supernet below its input has not learnt the task yet), skip ops and the genotype's width path."""
    runs = Path(runs)
    rows = []
    for job in grid(profile, data_root):
        if job.kind == "search" and done(runs, job):
            m, best = selected_epoch(runs / job.out)
            rows.append({"search": Path(job.out).name, "sharing": job.cfg.space.sharing, "seconds": m["seconds"],
                         "cpu_seconds": m.get("cpu_seconds"), "steps": m["steps"],
                         "epochs": m["epochs_run"], "best_epoch": m["best_epoch"], "val_psnr": m["val_psnr"],
                         "input_psnr": best["input_psnr"],
                         "skip_ops": m["skip_ops"], "supernet_params": m["supernet_params"], "path": m["genotype"]["path"],
                         "machine": m.get("machine")})
    return rows


def sets_of(rows: list[dict[str, Any]]) -> list[str]:
    """Test sets appearing in ``rows``, in order of first appearance."""
    return list(dict.fromkeys(k.rsplit("/", 1)[0] for r in rows for k in r if k.endswith("/psnr")))


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]], size: int) -> str:
    """The main tables, one per task: model, parameters, GFLOPs and latency at ``size`` x ``size`` output, PSNR/SSIM per set."""
    tables = []
    for task in dict.fromkeys(r["task"] for r in rows):
        chosen = [r for r in rows if r["task"] == task]
        sets = sets_of(chosen)
        head = ["level", "model", "params (K)", f"GFLOPs ({size}²)", f"latency {size}² (s)", "CPU time (s)",
                "retrain iterations", *[f"{s} PSNR / SSIM" for s in sets]]
        lines = [f"**{'Denoising' if task == 'denoise' else 'Super-resolution'}**", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        for r in chosen:
            cells = [level_label(task, r["level"]), r["model"], _fmt(r["params"] / 1e3, 1),
                     _fmt(r.get("gflops"), 2), _fmt(r.get("latency_s"), 3), _fmt(r.get("cpu_s"), 3),
                     _fmt(r.get("iterations"), 0)]
            cells += [f"{r[f'{s}/psnr']:.2f} / {r[f'{s}/ssim']:.4f}" if f"{s}/psnr" in r else "-" for s in sets]
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def to_markdown(rows: list[dict[str, Any]], columns: dict[str, str], digits: int = 2) -> str:
    """Any list of dicts as a Markdown table: ``columns`` maps keys to headers; floats get ``digits`` decimals."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k), digits) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def group_of(row: dict[str, Any]) -> str:
    """The group a model is compared in: its HiNAS variant, or the family of other models (random, dncnn, bicubic)."""
    return row["variant"] if row["family"] == "hinas" else row["family"]


def psnr_groups(rows: list[dict[str, Any]]) -> dict[tuple, list[float]]:
    """PSNR values per (task, level, set, :func:`group_of`)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        name = group_of(r)
        for s in sets_of([r]):
            groups.setdefault((r["task"], r["level"], s, name), []).append(r[f"{s}/psnr"])
    return groups


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample std and count of PSNR per (task, level, set, family-or-variant): HiNAS seeds, random draws."""
    return [{"task": task, "level": level, "set": s, "group": name, "n": len(values), **spread(values)}
            for (task, level, s, name), values in psnr_groups(rows).items()]


def search_beats_random(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, level, set) and group (each HiNAS variant, DnCNN-17): its mean PSNR minus the random architectures',
    with a 95% percentile-bootstrap interval (:func:`hinas.studies.aggregate.bootstrap_difference`), whether its
    mean beats the best random architecture, and the mean retraining iterations of both: at equal CPU time a slower
    network trains fewer."""
    groups = psnr_groups(rows)
    steps: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("iterations") is not None:
            steps.setdefault((r["task"], r["level"], group_of(r)), []).append(r["iterations"])

    def mean_steps(task: str, level: int, group: str) -> int | None:
        return round(statistics.fmean(steps[task, level, group])) if (task, level, group) in steps else None

    out = []
    for (task, level, name, group), values in groups.items():
        rnd = groups.get((task, level, name, "random"))
        if group in ("random", "bicubic") or rnd is None:
            continue
        ci = bootstrap_difference(values, rnd)
        out.append({"task": task, "level": level, "set": name, "group": group, "n": len(values), "n_random": len(rnd),
                    "mean": statistics.fmean(values), "random_mean": statistics.fmean(rnd), "random_best": max(rnd),
                    "gain_db": ci["diff"], "ci_low": ci["low"], "ci_high": ci["high"],
                    "beats_best_random": statistics.fmean(values) > max(rnd),
                    "iterations": mean_steps(task, level, group), "random_iterations": mean_steps(task, level, "random")})
    return out


def latency_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The denoisers at the noise level of the latency-aware searches (profiles with latency targets), fastest first,
    each with its measured latency, the table's prediction and its error (predicted over measured, in percent)."""
    levels = {r["level"] for r in rows if r.get("target_ms") is not None}
    out = [{**r, "error_pct": 100 * (r["predicted_ms"] / r["latency_ms"] - 1) if r.get("predicted_ms") else None}
           for r in rows if r.get("latency_ms") and r["task"] == "denoise" and r["level"] in levels]
    return sorted(out, key=lambda r: r["latency_ms"])


def latency_verdict(rows: list[dict[str, Any]], set_name: str) -> list[dict[str, Any]]:
    """Issue 15's question for each latency-aware search: at no more than half DnCNN-17's latency (its best form),
    does the found network's PSNR on ``set_name`` reach the best of the random architectures of its latency?"""
    timed = latency_rows(rows)
    dncnn = next((r for r in timed if r["family"] == "dncnn"), None)
    out = []
    for r in timed:
        if r["family"] != "hinas" or r.get("target_ms") is None or f"{set_name}/psnr" not in r:
            continue
        rnd = [x for x in timed if x["family"] == "random-lat" and x["target_ms"] == r["target_ms"] and f"{set_name}/psnr" in x]
        best = max(rnd, key=lambda x: x[f"{set_name}/psnr"], default=None)
        out.append({"model": r["model"], "target_ms": r["target_ms"], "latency_ms": r["latency_ms"],
                    "dncnn_ms": dncnn["latency_ms"] if dncnn else None,
                    "half_dncnn": dncnn is not None and r["latency_ms"] <= dncnn["latency_ms"] / 2,
                    "psnr": r[f"{set_name}/psnr"], "n_random": len(rnd),
                    "random_ms": "-".join(f"{f(x['latency_ms'] for x in rnd):.0f}" for f in (min, max)) if rnd else None,
                    "random_best": best[f"{set_name}/psnr"] if best else None,
                    "random_mean": statistics.fmean(x[f"{set_name}/psnr"] for x in rnd) if rnd else None,
                    "beats_best_random": best is not None and r[f"{set_name}/psnr"] >= best[f"{set_name}/psnr"]})
    return out


def pareto_front(rows: list[dict[str, Any]], set_name: str) -> list[dict[str, Any]]:
    """The models no other model beats on both latency and PSNR on ``set_name``, fastest first."""
    timed = [r for r in latency_rows(rows) if f"{set_name}/psnr" in r]
    front, best = [], float("-inf")
    for r in timed:  # fastest first: a model is on the front when it beats the PSNR of every faster one
        if r[f"{set_name}/psnr"] > best:
            front.append(r)
            best = r[f"{set_name}/psnr"]
    return front


def genotype_agreement(runs: str | Path, profile: Profile) -> dict[str, Any]:
    """Whether the ``lwas`` searches of different seeds derived the same genotype, and how many cells and paths differ."""
    runs = Path(runs)
    found = {seed: runs / f"search/denoise-lwas-s{seed}/genotype.json" for seed in profile.seeds}
    genotypes = {seed: Genotype.load(p) for seed, p in found.items() if p.is_file()}
    seeds = sorted(genotypes)
    pairs = [(a, b, compare(genotypes[a], genotypes[b])) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    return {"seeds": seeds, "agree": all(not diff for _, _, diff in pairs) if pairs else None,
            "paths": {s: list(genotypes[s].path) for s in seeds},
            "differences": {f"{a} vs {b}": len(diff) for a, b, diff in pairs}}



# --- published figures ----------------------------------------------------------------------------------

PUBLISHED: tuple[dict[str, Any], ...] = (
    # (docs/HINAS.md) MATLAB bicubic: no training, so the same protocol as ours.
    *({"source": "bicubic (MATLAB)", "ours": "bicubic", "task": "sr", "level": scale, "set": name, "psnr": psnr,
       "comparable": "yes", "why": "no training; same test protocol"}
      for scale, figures in ((2, (33.66, 30.24, 29.56)), (4, (28.42, 26.00, 25.96)))
      for name, psnr in zip(("Set5", "Set14", "B100"), figures)),
    # DnCNN-S (Zhang et al. 2017), as quoted in docs/HINAS.md.
    *({"source": "DnCNN-S (published)", "ours": "dncnn-17", "task": "denoise", "level": 25, "set": name, "psnr": psnr,
       "comparable": "no", "why": "same test protocol, but trained to convergence on a GPU; ours has the CPU budget"}
      for name, psnr in (("BSD68", 29.23), ("Set12", 30.44))),
    # DuRN-P on the paper's BSD500 benchmark (docs/HINAS.md).
    *({"source": "DuRN-P (peer)", "ours": "", "task": "denoise", "level": sigma, "set": "BSD500-test", "psnr": psnr,
       "comparable": "no", "why": "other test set (BSD500 test, 200 images) and sigmas; full GPU training"}
      for sigma, psnr in ((30, 28.49), (50, 26.36), (70, 25.06))),
    # Light x2 SR peers (docs/HINAS.md): Set5 / Set14 / B100.
    *({"source": f"{peer} (peer, {params} M)", "ours": "", "task": "sr", "level": 2, "set": name, "psnr": psnr,
       "comparable": "no", "why": "same test protocol; trained on DIV2K for days on GPUs"}
      for peer, params, figures in (("CARN", 1.59, (37.76, 33.52, 32.09)), ("CARN-M", 0.41, (37.53, 33.26, 31.92)),
                                    ("FALSR-A", 1.02, (37.82, 33.55, 32.12)), ("FALSR-C", 0.41, (37.66, 33.26, 31.96)))
      for name, psnr in zip(("Set5", "Set14", "B100"), figures)),
)
"""Published and peer figures (docs/HINAS.md) and which of our models, if any, measures the same thing."""

PAPER_CLAIMS = (
    "HiNAS search: about 1 GPU-hour for denoising (BSD500) and 3.5 GPU-hours for x4 SR (DIV2K) on one GTX 1080Ti, "
    "100 epochs of the full supernet (L=3, B=4, F=10 / L=2, B=3, F=8); retraining 600k iterations at batch 24 (16 for SR).",
    "Found networks of roughly 0.2-1.0 M parameters, competitive with DnCNN, RED, MemNet, NLRN, N3Net, DuRN and light SR nets.",
    "Layer-wise architecture sharing (lwas) beats one tied cell for the whole network.",
)
"""The paper's claims as docs/HINAS.md states them; its PSNR tables are not reproduced there, so none are quoted."""


def published_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every published figure beside ours for the same model, set and level where we have one (``None`` otherwise)."""
    ours = {(r["task"], r["level"], r["model"]): r for r in rows}
    out = []
    for f in PUBLISHED:
        mine = ours.get((f["task"], f["level"], f["ours"]))
        out.append({**f, "our_psnr": mine.get(f"{f['set']}/psnr") if mine else None})
    return out


def budget(profile: Profile) -> str:
    """One line stating what every figure of a profile cost: search and retraining budget per task, hardware."""

    def searched(overrides: tuple[str, ...], patch: str) -> str:
        cfg = resolve(SearchConfig, profile.search_preset, overrides=list(overrides))
        return (f"search {cfg.epochs} epochs x {cfg.patches_per_image} patch/image, batch {cfg.batch} of "
                f"{patch or f'{cfg.patch}px'}, supernet L={cfg.space.layers} B={cfg.space.nodes} F={cfg.space.filters}")

    def retrained(overrides: tuple[str, ...], patch: str) -> str:
        cfg = resolve(TrainConfig, profile.train_preset, overrides=list(overrides))
        spent = f"{cfg.minutes:g} CPU-minutes" if cfg.minutes else f"{cfg.iterations} it"
        return f"retrain {spent} x batch {cfg.batch} of {patch or f'{cfg.patch}px'}, F={cfg.filters}"

    def retrained_sr() -> str:
        """The retraining every SR scale shares, then each scale ``train_sr_at`` retrains otherwise."""
        parts = [retrained((*profile.train, *profile.train_sr), f"{profile.sr_patch}px (high resolution)")]
        for scale, _ in profile.train_sr_at:
            overrides = profile.retrain_overrides("sr", scale)
            cfg = resolve(TrainConfig, profile.train_preset, overrides=list(overrides))
            parts.append(f"x{scale} instead on {cfg.data}, {retrained(overrides, f'{cfg.patch * scale}px (high resolution)')}")
        return "; ".join(parts)

    tasks = {task for task, _ in profile.order}
    parts = []
    if "denoise" in tasks:
        parts.append(f"denoising: {searched(profile.search, '')}; {retrained(profile.train, '')}")
    if "sr" in tasks:
        at = f"searched at x{profile.sr_search_scale}" if profile.sr_search_scale else "searched per scale"
        high = f"{profile.sr_patch}px (high resolution)"
        parts.append(f"SR ({at}): {searched((*profile.search, *profile.search_sr), high)}; {retrained_sr()}")
    return "; ".join(parts) + f"; {profile.hardware}"


def main(argv: list[str] | None = None) -> int:
    """``python -m hinas.studies.results --profile cpu --runs results/runs [--records DIR] [--workers 2] [--stop-at 23:05]``:
    build the runs."""
    from datetime import UTC, datetime

    args = build_parser().parse_args(argv)
    profile = PROFILES[args.profile] if args.targets is None else replace(PROFILES[args.profile], latency_targets=args.targets)
    deadline = None
    if args.stop_at:
        now = datetime.now(UTC)
        hour, minute = map(int, args.stop_at.split(":"))
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
    left = run_grid(args.runs, profile, data_root=args.data_root, workers=args.workers, deadline=deadline,
                    records=args.records, mix_machines=args.mix_machines,
                    log=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    print(f"{len(left)} jobs left undone" + (f": {', '.join(j.out for j in left)}" if left else ""))
    if args.metrics:
        rows = collect(args.runs, profile, args.data_root)
        flat = {f"lat{v['target_ms']:g}/{k}": int(x) if isinstance(x, bool) else x
                for v in latency_verdict(rows, profile.denoise_sets[0]) for k, x in v.items()
                if isinstance(x, (int, float)) and k != "target_ms"}  # DVC metrics: flat numbers, booleans as 0/1
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.metrics), {"left_undone": len(left), **flat})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hinas.studies.results", description=main.__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--runs", default="results/runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-root", default="")
    parser.add_argument("--stop-at", help="UTC time HH:MM after which no job starts")
    parser.add_argument("--records", help="folder kept in git that records every finished run's results (no weights) "
                        "and from which a fresh checkout resumes, e.g. results/equal-time/records")
    parser.add_argument("--targets", type=_targets, help="latency targets instead of the profile's, as MS:RANDOMS,... "
                        "(e.g. 185:5: a search at 185 ms and 5 random architectures of its network's latency)")
    parser.add_argument("--mix-machines", action="store_true", help="retrain a noise level or scale here even where "
                        "earlier retrains of it ran on another machine (by default they wait for that machine)")
    parser.add_argument("--metrics", help="write the latency targets' verdicts (latency_verdict) to this JSON file")
    return parser


def _targets(text: str) -> tuple[tuple[float, int], ...]:
    """``170:5,195`` -> ((170.0, 5), (195.0, 0)): latency targets in ms, each with its number of random architectures."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        out = tuple((float(p[0]), int(p[1]) if len(p) > 1 else 0) for p in pairs if len(p) <= 2)
    except ValueError:
        out = ()
    if not out or len(out) != len(pairs) or any(ms <= 0 or n < 0 for ms, n in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected MS[:RANDOMS],... with MS > 0 and RANDOMS >= 0, "
                                         "e.g. 170:5,195")
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""The one training loop that search and retraining plug into.

A :class:`Job` says what to train and how one step goes; :func:`fit` does everything else, once:
check the run directory, resume its checkpoint, join the process group, seed, pick device and precision,
replicate the model, restore or start the state, show progress, checkpoint on schedule and on SIGINT or
SIGTERM, roll back numerical faults, and close the run. Resume, rollback and precision are fixed here, for
both jobs.

The loop runs in *phases* (an epoch of the search; the whole of retraining): the job yields the batches left
in the current phase, takes one step per batch, may ask for a checkpoint after a step (a validation), and
closes the phase (the search's end-of-epoch validation and selection). A checkpoint is written at every phase
end, every ``checkpoint_every`` steps, when the job asks and when a signal arrives, so a stop resumes exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn
from tqdm import tqdm  # plain text: it shows in terminals, notebooks and exported notebooks alike

from hinas.engine import distributed
from hinas.engine.checkpoint import Checkpointer, Progress, StopSignals, load_state, resume_state
from hinas.engine.guard import checked_step
from hinas.engine.losses import restoration_loss
from hinas.engine.rundir import CHECKPOINT, RunDir, check_run_dir, seed_everything
from hinas.engine.settings import RunConfig
from hinas.errors import CheckpointError, NonFiniteError
from hinas.hardware import (
    amp_dtype,
    autocast,
    exact_float32,
    machine,
    memory_layout,
    pick_device,
    precision_name,
    prepare_device,
    set_threads,
)

P = TypeVar("P", bound=Progress)
R = TypeVar("R")


class Job(ABC, Generic[P, R]):
    """One kind of training run (search, retrain): its data, model, optimisers, step and results.

    :func:`fit` sets ``ctx``, ``amp``, ``layout``, ``model``, ``step_model``, ``optimizers``, ``run``, ``ckpt`` and ``bar``
    before it calls anything past :meth:`build`, so the hooks can use them.
    """

    kind: ClassVar[str]
    """``search`` or ``retrain``: names the checkpoint kind and the command that resumes it."""
    progress_type: ClassVar[type[Progress]]

    ctx: distributed.Context
    amp: torch.dtype | None
    layout: torch.memory_format
    facts: dict[str, Any]
    """Device, precision, layout and whether the steps are compiled, for the run's metrics."""
    model: nn.Module
    """The (replicated) module as written: checkpoints, evaluation and latency use it."""
    step_model: nn.Module
    """What the training steps call: ``model``, or its ``torch.compile`` form (same parameters) when ``compile`` is set."""
    optimizers: dict[str, torch.optim.Optimizer]
    grad_scaler: torch.amp.GradScaler
    run: RunDir
    ckpt: Checkpointer
    bar: Any

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @abstractmethod
    def prepare(self) -> None:
        """Load and check the data; runs after seeding and before the run directory is touched."""

    @abstractmethod
    def build(self) -> nn.Module:
        """The model to train, on the CPU; the engine moves and replicates it."""

    @abstractmethod
    def make_optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (the checkpoint's keys), over the replicated model's parameters."""

    def opened(self) -> None:
        """The run directory exists (``self.run``): write what the run records before training."""

    @abstractmethod
    def start_record(self) -> dict[str, Any]:
        """What the log's ``start`` event records besides device and precision."""

    @abstractmethod
    def steps(self, state: P) -> tuple[int, int]:
        """(steps done, steps in all), for the progress bar."""

    @abstractmethod
    def finished(self, state: P) -> bool:
        """Nothing is left to train."""

    @abstractmethod
    def batches(self, state: P) -> Iterable[Any]:
        """The batches left in the current phase; puts the model in training mode."""

    @abstractmethod
    def step(self, state: P, batch: Any) -> None:
        """One training step on ``batch``, advancing ``state``'s position."""

    @abstractmethod
    def phase_over(self, state: P) -> bool:
        """The step just taken was the current phase's last."""

    def after_step(self, state: P) -> bool:
        """Work due after a step (a validation); True when a checkpoint should record it."""
        return False

    def end_phase(self, state: P) -> None:
        """Close the current phase (validate, select) and move ``state`` to the next."""

    @abstractmethod
    def finish(self, state: P) -> R:
        """Write the run's results once training is over; returns them."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The restoration loss of the model on a batch: forward in the run's precision and layout, loss in float32."""
        x = x.to(self.device, non_blocking=True, memory_format=self.layout)
        y = y.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            pred = self.step_model(x)
        cfg = self.cfg
        with exact_float32():
            return restoration_loss(pred.float(), y, cfg.pixel_loss, cfg.ssim_weight, scale, batch_mean=self.ctx.batch_mean)

    def guarded_step(self, compute: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                     params: Sequence[nn.Parameter], what: str, clip: float = 0.0) -> float:
        """One optimiser step on the loss ``compute`` returns, through :func:`checked_step` with this run's ranks and
        ``step_retries`` (each retry logged); returns the loss. A retry starts from the model's buffers as they were
        before the step (BatchNorm's running statistics would otherwise count the batch twice)."""
        buffers = list(self.model.buffers()) if self.cfg.step_retries else []
        before = [b.detach().clone() for b in buffers]
        attempts = 0

        def attempt() -> torch.Tensor:
            nonlocal attempts
            if attempts:
                for buffer, saved in zip(buffers, before):
                    buffer.copy_(saved)
            attempts += 1
            return compute()

        return checked_step(attempt, optimizer, self.grad_scaler, params, what, clip=clip, sync=self.ctx.sync_grads,
                            any_rank=self.ctx.any_rank, retries=self.cfg.step_retries,
                            on_retry=lambda message: self.run.log(event="retried", message=message))

    def checkpoint_due(self, state: P) -> bool:
        """``checkpoint_every`` counts the steps done in all; a job may count them otherwise (the search: per epoch)."""
        every = self.cfg.checkpoint_every
        return bool(every) and self.steps(state)[0] % every == 0


@dataclass(frozen=True)
class Start:
    """What a run knows once its inputs are checked: the checkpoint to resume (or None), this process's context,
    whether it shows progress, and how it computes (device, precision, layout, compiled steps: resolved once, here)."""

    saved: dict[str, Any] | None
    ctx: distributed.Context
    progress: bool
    amp: torch.dtype | None
    layout: torch.memory_format
    compiled: bool = False

    def facts(self) -> dict[str, Any]:
        """How the run computes and on what, as its metrics and checkpoints record it."""
        layout = "channels_last" if self.layout == torch.channels_last else "nchw"
        return {"device": self.ctx.device.type, "precision": precision_name(self.amp), "layout": layout,
                "compiled": self.compiled, "machine": machine(self.ctx.device), "threads": torch.get_num_threads()}


def start_run(out: Path, kind: str, cfg: RunConfig, *, overwrite: bool, resume: bool, force: bool, progress: bool) -> Start:
    """The opening of every run, in the order that keeps ``out`` untouched until every input is checked: run
    directory, resume checkpoint, process group, seeds, device, precision and layout. A resumed run that would
    compute otherwise than it started (a CPU float32 run resumed on a GPU in bf16, say) is refused unless ``force``:
    its result would be neither run's."""
    check_run_dir(out, overwrite=overwrite, resume=resume)
    saved = resume_state(out, kind, cfg, force=force) if resume else None
    ctx = distributed.init(pick_device(cfg.device))
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    prepare_device(ctx.device, cfg.deterministic)
    start = Start(saved, ctx, progress and ctx.is_main, amp_dtype(ctx.device, cfg.amp, kind), memory_layout(ctx.device, kind),
                  cfg.compile)
    then = (saved or {}).get("facts")
    changed = ", ".join(f"{k} {then.get(k)} -> {v}" for k, v in start.facts().items()
                        if then and k not in ("machine", "threads") and then.get(k) != v)  # others computing alike may resume
    if changed and not force:
        raise CheckpointError(f"{out} was computed with {then} and would resume with {changed}; resume on a machine that "
                              "resolves the same (set device and amp explicitly), or pass --force")
    return start


def set_up(job: Job[Any, Any], start: Start) -> None:
    """Give ``job`` its context, precision, layout, data, replicated model (and its compiled form when asked), optimisers
    and grad scaler, as ``fit`` does (and benchmarks that time a job's steps without a run directory).

    The compiled form wraps the same module, so its parameters are the model's: state dicts, checkpoints and the
    optimisers see no ``_orig_mod.`` prefix, and evaluation keeps the eager module (other shapes, no recompiles)."""
    ctx = job.ctx = start.ctx
    job.amp, job.layout, job.facts = start.amp, start.layout, start.facts()
    job.prepare()
    job.model = ctx.replicate(job.build().to(ctx.device)).to(memory_format=job.layout)
    job.step_model = torch.compile(job.model) if start.compiled else job.model
    job.optimizers = job.make_optimizers(job.model)
    job.grad_scaler = torch.amp.GradScaler(ctx.device.type, enabled=job.amp is torch.float16)


def fit(job: Job[P, R], out: str | Path, *, overwrite: bool = False, resume: bool = False, force: bool = False,
        progress: bool = True) -> R:
    """Train ``job`` into run directory ``out``; returns what :meth:`Job.finish` returns.

    ``resume`` continues the interrupted run in ``out`` exactly where its checkpoint left it; settings or code
    that differ from the run's are refused unless ``force``. Every input is checked before ``out`` is touched.
    """
    out, cfg = Path(out), job.cfg
    start = start_run(out, job.kind, cfg, overwrite=overwrite, resume=resume, force=force, progress=progress)
    set_up(job, start)
    ctx, model, optimizers, grad_scaler = job.ctx, job.model, job.optimizers, job.grad_scaler
    saved = start.saved
    resumed = load_state(job.progress_type, saved, model, optimizers, grad_scaler, out / CHECKPOINT) if saved else None

    run = job.run = RunDir(ctx.run_path(out), cfg, overwrite=overwrite, resume=resumed is not None)
    job.opened()
    ckpt = job.ckpt = Checkpointer(run, job.kind, cfg, model, optimizers, grad_scaler, facts=job.facts)
    if resumed is not None:
        state = resumed
        ckpt.resumed(state, saved)
        if not ctx.is_main:  # ranks > 0 write into a fresh scratch folder: give them a state to roll back to
            ckpt.save(state)
    else:
        run.log(event="start", **job.facts, **job.start_record())
        state = job.progress_type()
        ckpt.save(state)  # the first rollback target and resume point

    done, total = job.steps(state)
    job.bar = tqdm(total=total, initial=done, desc=job.kind, disable=not start.progress, dynamic_ncols=True)
    try:
        with StopSignals() as stop:
            while not job.finished(state):
                try:
                    state = _phase(job, state, stop, ctx)
                except NonFiniteError as fault:
                    state = ckpt.rollback(state, fault)
        return job.finish(state)
    finally:
        job.bar.close()
        run.close()


def _phase(job: Job[P, Any], state: P, stop: StopSignals, ctx: distributed.Context) -> P:
    """The rest of the current phase: steps, their checkpoints, a stop on a signal, then the phase's end."""
    for batch in job.batches(state):
        job.step(state, batch)
        job.bar.update()
        asked = job.after_step(state)
        last = job.phase_over(state)
        signal = ctx.agreed_signal(stop.received)
        if not last and (signal or asked or job.checkpoint_due(state)):
            job.ckpt.save(state)
            signal = ctx.agreed_signal(stop.received)  # or one that arrived while the checkpoint was written
        if signal and not last:
            raise job.ckpt.interrupted(state, signal)
        if last:
            break
    job.end_phase(state)
    job.ckpt.save(state)
    signal = ctx.agreed_signal(stop.received)
    if signal and not job.finished(state):
        raise job.ckpt.interrupted(state, signal)
    return state

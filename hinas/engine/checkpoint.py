"""Exact resume: the complete training state of a search or retrain, saved atomically and read without running code.

A checkpoint holds the weights (alphas and betas included), every optimiser,
the AMP grad scaler, every random generator (Python, NumPy, torch CPU and
CUDA), the loop's plain-data progress (position, loss sums in the making,
history, best so far, fault handling) and the settings and code it was
written with. Learning rates need no state of their own: the schedules are
pure functions of the position. Neither does the data: a ``PatchDataset``
item is a pure function of (seed, epoch, index), so a loader resumes mid-epoch
by starting its sampler at the first unused index (:class:`OffsetSampler`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from hinas.config import to_dict
from hinas.engine.rundir import CHECKPOINT, RunDir
from hinas.errors import CheckpointError, Interrupted, NonFiniteError, first_line
from hinas.files import atomic_torch_save, torch_load_untrusted
from hinas.version import __version__

FORMAT = "hinas.checkpoint"
VERSION = 1
_KEYS = ("config", "code", "model", "optimizers", "scaler", "rng", "progress")


@dataclass
class Progress:
    """What a training loop needs besides tensors to continue exactly; subclasses add their position."""

    history: list[dict[str, Any]] = field(default_factory=list)
    lr_scale: float = 1.0
    """Multiplies every learning rate; each rollback after a non-finite step shrinks it."""
    rollbacks: int = 0
    elapsed: float = 0.0
    """Seconds spent computing, carried across interruptions (time spent stopped is not counted)."""
    cpu_elapsed: float = 0.0
    """CPU seconds of this process (all its threads) so far, carried across interruptions: the cost that stays
    comparable when other work shares the machine."""

    def position(self) -> str:
        raise NotImplementedError


P = TypeVar("P", bound=Progress)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: each new iterator draws a worker seed from it, never from the global RNG a checkpoint
    restores (PatchDataset ignores worker seeds, so this changes no patch)."""
    return torch.Generator().manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator a run may draw from, as tensors and plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; CUDA generators only when this machine has as many devices as the saving one."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.cache
def code_version() -> dict[str, str]:
    """hinas and torch versions and a digest of hinas's source files: resuming under other code is refused unless forced."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {"hinas": __version__, "torch": str(torch.__version__), "source": digest.hexdigest()[:16]}


def differences(run: Any, now: Any, prefix: str = "") -> list[str]:
    """``key: <run's value> -> <value now>`` for every leaf that differs between two nested mappings."""
    if isinstance(run, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(run) | set(now), key=str):
            out += differences(run.get(key, "<absent>"), now.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if run == now else [f"{prefix[:-1]}: {run!r} -> {now!r}"]


def read_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """A hinas checkpoint of ``kind`` (search or retrain), read with ``weights_only=True``: pickled code is refused, never run."""
    saved = torch_load_untrusted(path, f"{kind} checkpoint", CheckpointError)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hinas training checkpoint (no 'format': {FORMAT!r})")
    if saved.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {saved.get('version')!r}; this hinas reads version {VERSION}")
    if saved.get("kind") != kind:
        raise CheckpointError(f"{path}: a {saved.get('kind')} checkpoint, not a {kind} one")
    missing = [k for k in _KEYS if k not in saved]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return saved


def resume_state(run: Path, kind: str, cfg: Any, *, force: bool = False) -> dict[str, Any] | None:
    """The checkpoint of the interrupted run in ``run``, checked against ``cfg`` and this code before any work starts.

    None for a run stopped before its first checkpoint: nothing was computed, so it starts from the beginning.
    """
    path = run / CHECKPOINT
    if not (path.exists() or path.is_symlink()):  # anything else under that name is read, and refused, below
        if (run / "config.yaml").is_file():
            return None
        raise CheckpointError(f"{run} holds no run to resume (no {CHECKPOINT}, no config.yaml)")
    saved = read_checkpoint(path, kind)
    diffs = differences({"config": saved["config"], "code": saved["code"]}, {"config": to_dict(cfg), "code": code_version()})
    if diffs and not force:
        raise CheckpointError(f"{run} was started with other settings or code; differing keys (run -> now):\n  "
                              + "\n  ".join(diffs)
                              + f"\nresume with the run's own settings (--resume {run} alone reads its config.yaml), "
                                "or pass --force")
    return saved


def load_state(cls: type[P], saved: dict[str, Any], model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                  grad_scaler: torch.amp.GradScaler, source: Path) -> P:
    """Load weights, optimisers, AMP grad scaler and generators from ``saved`` (read from ``source``).

    Returns the loop's progress.
    """
    try:
        model.load_state_dict(saved["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        if saved["scaler"]:
            grad_scaler.load_state_dict(saved["scaler"])
        state = cls(**saved["progress"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: does not fit this {saved['kind']} (written for another search space "
                              f"or network?): {first_line(err)}") from None
    set_rng_state(saved["rng"])
    return state


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``received``; the loop checkpoints at its next step boundary and stops.

    A second signal stops at once (KeyboardInterrupt): atomic writes leave the last checkpoint intact.
    Outside the main thread signals cannot be caught and the defaults stay.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Checkpointer:
    """Saves and restores one run's complete training state in ``run/checkpoint.pt``, and rolls back numerical faults.

    ``cfg`` supplies the fault policy: ``on_nonfinite``, ``max_rollbacks`` and ``rollback_lr_factor``.
    """

    def __init__(self, run: RunDir, kind: str, cfg: Any, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 grad_scaler: torch.amp.GradScaler, facts: dict[str, Any] | None = None) -> None:
        self.run, self.kind, self.cfg, self.facts = run, kind, cfg, facts or {}
        self.model, self.optimizers, self.grad_scaler = model, optimizers, grad_scaler
        self.path = run / CHECKPOINT
        self.saved_at = ""
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def seconds(self) -> float:
        """Computing time of the run so far, across interruptions."""
        return time.perf_counter() - self._start

    def cpu_seconds(self) -> float:
        """CPU time of the run so far (every thread of this process), across interruptions."""
        return time.process_time() - self._cpu_start

    def save(self, state: Progress) -> None:
        state.elapsed, state.cpu_elapsed = self.seconds(), self.cpu_seconds()
        atomic_torch_save({
            "format": FORMAT, "version": VERSION, "kind": self.kind, "config": to_dict(self.cfg), "code": code_version(),
            "model": self.model.state_dict(), "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": self.grad_scaler.state_dict(), "rng": rng_state(), "progress": dataclasses.asdict(state),
            "facts": self.facts,
        }, self.path)
        self.saved_at = state.position()

    def reload(self, cls: type[P]) -> P:
        """Back to the state in the checkpoint file."""
        state = load_state(cls, read_checkpoint(self.path, self.kind), self.model, self.optimizers, self.grad_scaler, self.path)
        self.saved_at = state.position()
        return state

    def resumed(self, state: Progress, saved: dict[str, Any]) -> None:
        """Continue the clock of a run restored from ``saved``, record its settings and log the resumption."""
        self._start = time.perf_counter() - state.elapsed
        self._cpu_start = time.process_time() - state.cpu_elapsed
        self.saved_at = state.position()
        self.run.write_config(self.cfg)
        self.run.log(event="resume", position=state.position(), changed=differences(saved["config"], to_dict(self.cfg)))

    def rollback(self, state: P, fault: NonFiniteError) -> P:
        """Back to the last checkpoint with smaller learning rates, or stop with a report, as ``cfg.on_nonfinite`` says."""
        cfg = self.cfg
        self.run.log(event="nonfinite", position=state.position(), message=str(fault))
        if cfg.on_nonfinite == "stop" or state.rollbacks >= cfg.max_rollbacks:
            why = "on_nonfinite=stop" if cfg.on_nonfinite == "stop" else f"{state.rollbacks} rollbacks already (max_rollbacks)"
            raise NonFiniteError(f"{fault}; stopped ({why}). The step was not applied and nothing was derived from it; "
                                 f"{self.path} still holds the last good state ({self.saved_at}). Lower the learning "
                                 f"rates and continue with: hinas {self.kind} --resume {self.run.path} --set ... --force")
        back = self.reload(type(state))
        back.lr_scale = state.lr_scale * cfg.rollback_lr_factor
        back.rollbacks = state.rollbacks + 1
        self.run.log(event="rollback", position=back.position(), lr_scale=back.lr_scale, rollbacks=back.rollbacks)
        self.save(back)
        return back

    def interrupted(self, state: Progress, signum: int) -> Interrupted:
        """The exception that ends a run stopped by a signal, once its checkpoint is written."""
        name = signal.Signals(signum).name
        self.run.log(event="interrupted", signal=name, position=state.position())
        return Interrupted(f"stopped by {name} at {state.position()}; checkpoint {self.path} is complete; "
                           f"continue with: hinas {self.kind} --resume {self.run.path}", signum)

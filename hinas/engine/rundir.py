"""What every run needs: seeds, device and mixed-precision choice, a run directory with atomic writes and a JSON-lines log."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hinas.config import to_dict
from hinas.errors import ConfigError, OutputError
from hinas.files import atomic_write_bytes, lock_folder

FINISHED = "metrics.json"
"""A run directory holding this file is finished; it is written last."""
CHECKPOINT = "checkpoint.pt"
"""A run directory holding this file but not ``FINISHED`` is an interrupted run that ``--resume`` continues."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


LOG = "log.jsonl"
"""Every run directory holds this file from its start: ``--overwrite`` clears a folder that holds it."""


def check_run_dir(path: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to start over a finished or interrupted run, to resume one that is finished, or to touch one a process is
    running; cheap, so it runs first."""
    if overwrite and resume:
        raise ConfigError("--resume continues a run and --overwrite starts it over; choose one")
    if path.is_dir():
        os.close(lock_folder(path))  # refuses now, before any work; RunDir takes the lock for the run's whole life
    if (path / FINISHED).exists() and not overwrite:
        what = "nothing to resume" if resume else "choose another --out"
        raise ConfigError(f"{path} already holds a finished run; {what} or pass --overwrite to start over")
    if (path / CHECKPOINT).exists() and not (overwrite or resume):
        raise ConfigError(f"{path} holds an interrupted run ({CHECKPOINT}); continue it with --resume {path} "
                          "or pass --overwrite to start over")


class RunDir:
    """A run's folder: resolved config, ``log.jsonl``, checkpoints, results; ``metrics.json`` marks it finished.

    ``overwrite`` first removes every file of the run the folder held; ``resume`` keeps them and appends to the log.
    The folder is locked while the run lasts: a second process given it is refused, never interleaved.
    """

    def __init__(self, path: str | Path, cfg: Any, *, overwrite: bool = False, resume: bool = False) -> None:
        self.path = Path(path)
        check_run_dir(self.path, overwrite=overwrite, resume=resume)
        self._tb = writer = None
        if getattr(cfg, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter as writer
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write the run directory {self.path}: {err.strerror or err}; "
                              "choose a writable --out with free space") from err
        self._lock: int | None = lock_folder(self.path)
        try:
            if overwrite and (self.path / LOG).exists():
                _clear(self.path)
            if not resume:  # a resumed run records its settings once its checkpoint has been restored
                self.write_config(cfg)
            self._log = open(self.path / LOG, "a" if resume else "w", buffering=1)
        except OSError as err:
            self.close_lock()
            raise OutputError(f"cannot write the run directory {self.path}: {err.strerror or err}; "
                              "choose a writable --out with free space") from err
        except BaseException:
            self.close_lock()
            raise
        if writer is not None:
            self._tb = writer(str(self.path / "tensorboard"))

    def write_config(self, cfg: Any) -> None:
        import yaml

        atomic_write_bytes(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())

    def log(self, **record: Any) -> None:
        """One JSON line; records with an epoch or iteration also go to TensorBoard (when on) as scalars."""
        try:
            self._log.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write {self.path / 'log.jsonl'}: {err.strerror or err}") from err
        step = record.get("epoch", record.get("iteration"))
        if self._tb is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "iteration"):
                    self._tb.add_scalar(f"{record.get('event', 'run')}/{key}", value, step)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk has been reported already
            self._log.close()
        if self._tb is not None:
            self._tb.close()
        self.close_lock()

    def close_lock(self) -> None:
        """Let other processes use the folder again."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def discard(self) -> None:
        """Remove a run this process created and that failed on bad input, so nothing partial is left behind."""
        self.close()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _clear(path: Path) -> None:
    """Remove every file of the run in ``path``: first the mark of a finished run, so a crash never leaves a half-cleared
    folder that looks finished."""
    (path / FINISHED).unlink(missing_ok=True)
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()

"""What every run needs: seeds, device and mixed-precision choice, a run directory with atomic writes and a JSON-lines log."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hinas.config import to_dict
from hinas.errors import ConfigError, OutputError
from hinas.files import atomic_write_bytes

FINISHED = "metrics.json"
"""A run directory holding this file is finished; it is written last."""
CHECKPOINT = "checkpoint.pt"
"""A run directory holding this file but not ``FINISHED`` is an interrupted run that ``--resume`` continues."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_run_dir(path: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to start over a finished or interrupted run, or to resume one that is finished; cheap, so it runs first."""
    if overwrite and resume:
        raise ConfigError("--resume continues a run and --overwrite starts it over; choose one")
    if (path / FINISHED).exists() and not overwrite:
        what = "nothing to resume" if resume else "choose another --out"
        raise ConfigError(f"{path} already holds a finished run; {what} or pass --overwrite to start over")
    if (path / CHECKPOINT).exists() and not (overwrite or resume):
        raise ConfigError(f"{path} holds an interrupted run ({CHECKPOINT}); continue it with --resume {path} "
                          "or pass --overwrite to start over")


class RunDir:
    """A run's folder: resolved config, ``log.jsonl``, checkpoints, results; ``metrics.json`` marks it finished.

    ``overwrite`` first removes the files that mark a finished or interrupted run; ``resume`` keeps them and
    appends to the log.
    """

    def __init__(self, path: str | Path, cfg: Any, *, overwrite: bool = False, resume: bool = False) -> None:
        self.path = Path(path)
        check_run_dir(self.path, overwrite=overwrite, resume=resume)
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if overwrite:
                for name in (FINISHED, CHECKPOINT):
                    (self.path / name).unlink(missing_ok=True)
            if not resume:  # a resumed run records its settings once its checkpoint has been restored
                self.write_config(cfg)
            self._log = open(self.path / "log.jsonl", "a" if resume else "w", buffering=1)
        except OSError as err:
            raise OutputError(f"cannot write the run directory {self.path}: {err.strerror or err}; "
                              "choose a writable --out with free space") from err
        self._tb = None
        if getattr(cfg, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(str(self.path / "tensorboard"))

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

    def discard(self) -> None:
        """Remove a run this process created and that failed on bad input, so nothing partial is left behind."""
        self.close()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

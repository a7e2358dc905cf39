"""What every run needs: seeds, device and mixed-precision choice, a run directory with atomic writes and a JSON-lines log."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import to_dict
from .errors import ConfigError

FINISHED = "metrics.json"
"""A run directory holding this file is finished; it is written last."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; a CUDA request on a machine without it is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported) and full float32 on CPU, where it is fastest here."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def prepare_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename, so a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> Path:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
    return path


class RunDir:
    """A run's folder: resolved config, ``log.jsonl``, checkpoints, results; ``metrics.json`` marks it finished."""

    def __init__(self, path: str | Path, cfg: Any, *, overwrite: bool = False) -> None:
        import yaml

        self.path = Path(path)
        if (self.path / FINISHED).exists() and not overwrite:
            raise ConfigError(f"{self.path} already holds a finished run; choose another --out or pass --overwrite")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
        self._log = open(self.path / "log.jsonl", "a", buffering=1)
        self._tb = None
        if getattr(cfg, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def log(self, **record: Any) -> None:
        """One JSON line; records with an epoch or iteration also go to TensorBoard (when on) as scalars."""
        self._log.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        step = record.get("epoch", record.get("iteration"))
        if self._tb is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "iteration"):
                    self._tb.add_scalar(f"{record.get('event', 'run')}/{key}", value, step)

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

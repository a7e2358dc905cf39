"""Writes that a crash, a full disk or a kill cannot leave half-done: temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from hinas.errors import OutputError


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file, fsync and rename, so a crash leaves either the old file or the new one.

    A failed write (full or read-only disk) removes its temporary file and raises
    :class:`OutputError` naming the file; the previous version stays intact.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}; check that the folder is writable and has free space") from err
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without it a power cut can lose the new directory entry."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Serialise in memory first, so a failing disk surfaces as a plain OSError, not inside torch's zip writer."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def write_json(path: Path, obj: Any) -> Path:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
    return path

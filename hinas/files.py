"""Reads that never block or run code, and writes that a crash, a full disk or a kill cannot leave half-done."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import pickle
import re
import stat
from pathlib import Path
from typing import IO, Any

import torch

from hinas.errors import HinasError, OutputError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | Path, what: str, error: type[HinasError]) -> IO[bytes]:
    """``path`` opened for reading, refused at once (``error`` naming ``what`` it should be) unless it is a regular file.

    The file is opened non-blocking and checked on the open descriptor, so a FIFO or a
    device is never waited on or read, and nothing can swap the file between check and read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise error(f"{path}: cannot read {what}: it is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, what: str, error: type[HinasError], limit: int) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), refused when larger than ``limit``."""
    with open_regular(path, what, error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: cannot read {what}: more than {limit} bytes, far too large for a {what}")
    return data


def torch_load_untrusted(path: str | Path, what: str, error: type[HinasError]) -> Any:
    """``torch.load(weights_only=True)`` of a regular file: tensors and plain data load, pickled code is refused unrun.

    The refusal says what the file holds and why it is refused; it never passes on
    PyTorch's advice to load the file with the safety turned off.
    """
    with open_regular(path, what, error) as f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # torch's message opens with advice to turn the safety off: never passed on
            names = sorted(set(re.findall(r"GLOBAL [\w.]+", str(err))))
            if names:
                raise error(f"{path}: refused: it holds objects other than tensors and plain data ({', '.join(names)}); "
                            f"such a {what} could run code when loaded, so hinas never loads it") from None
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((b for a, b in itertools.pairwise(lines) if a.endswith("Unpickler error:")), "a damaged pickle")
            raise error(f"{path}: not a loadable checkpoint ({detail}); it may be truncated or not a {what} at all") from None
        except Exception as err:  # noqa: BLE001 - torch raises several types for truncated or foreign files
            first = (str(err).strip().splitlines() or [""])[0]
            raise error(f"{path}: not a loadable checkpoint ({type(err).__name__}: {first}); "
                        f"it may be truncated or not a {what} at all") from None


def lock_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` holding an exclusive lock on it, released when closed or when the process ends.

    ``flock`` on the folder itself: no lock file to leave behind, or to clear with ``--overwrite``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise OutputError(f"cannot use {path}: {err.strerror or err}; choose a readable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"{path} is in use by another hinas process (a run still going, or a restore writing into it); "
                          "wait for it to end, or choose another folder") from None
    return fd


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file, fsync and rename, so a crash leaves either the old file or the new one.

    A failed write (full or read-only disk) removes its temporary file and raises
    :class:`OutputError` naming the file; the previous version stays intact.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if len(os.fsencode(tmp.name)) > 255:  # NAME_MAX: a long final name gets a short temporary one
        tmp = path.with_name(f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}.tmp")
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
            raise OutputError(f"cannot write {path}: {err.strerror or err}; "
                              "check that the folder is writable and has free space") from err
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

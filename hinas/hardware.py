"""The device a run uses, its CPU threads and the precision it computes in, chosen from what this machine has."""

from __future__ import annotations

import contextlib
import os

import torch

from hinas.errors import ConfigError


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


def auto_threads() -> int:
    """The CPU cores idle now, never more than torch's current setting (physical cores, or ``OMP_NUM_THREADS``).

    Why: PyTorch's CPU kernels wait for every thread at each step, so a thread that
    must share its core with other work stalls all of them. On the 2-core test machine
    with other jobs running, a 5-step cpu-demo search took 99 s at torch's default of
    2 threads and 19 s at 1 thread; on an idle machine 2 threads gain far less than
    that. The 1-minute load average counts the busy cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
    return max(1, min(torch.get_num_threads(), round(idle)))


def set_threads(threads: int = 0) -> int:
    """Compute on ``threads`` CPU threads (0: :func:`auto_threads`); process-wide. Returns the number set."""
    if threads < 0:
        raise ConfigError(f"threads: must not be negative (0 chooses), got {threads}")
    n = threads or auto_threads()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


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


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory for large tensors instead of mapping fresh pages for each one. Process-wide.

    Why: a forward pass allocates dozens of 20-200 MB feature maps; glibc maps every block over
    32 MB afresh and the kernel zeroes its pages on first touch, which on the 2-core test machine
    costs more than the arithmetic (a LeakyReLU over 80 x 512 x 512 floats: 70 ms instead of 12 ms).
    Returns False where the C library is not glibc. Freed memory up to 1 GiB stays with the process.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))

"""The device a run uses and the precision it computes in, chosen from what this machine has."""

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


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (AMX or AVX-512 bf16), so bf16 kernels can beat float32; detected at run time.

    Elsewhere bf16 is emulated and slower than float32. ``HINAS_NO_BF16=1`` reports False, to run (and test)
    the float32 path on a CPU that has it.
    """
    if os.environ.get("HINAS_NO_BF16", "") not in ("", "0"):
        return False
    capabilities = torch.cpu.get_capabilities()  # the CPUID flags torch reads (x86; other CPUs report none of these)
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))

"""The device a run uses, its CPU threads and the precision it computes in, chosen from what this machine has."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

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


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | None = None) -> str:
    """What a run computes on, as runs, reports and latency tables name it: a GPU's name, or the CPU's model with the
    vector instructions torch dispatches to and whether it has bf16 units. Why: virtual machines may report only a
    family ("AMD EPYC") for CPUs as different as AVX2 and AVX-512 bf16 ones, whose training steps differ 2-4x, so
    CPU time is equal work only on the same machine."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}{', bf16 units' if cpu_has_bf16() else ''})"


def auto_threads() -> int:
    """The CPU cores idle now, never more than torch's current setting (physical cores, or ``OMP_NUM_THREADS``).

    Why: PyTorch's CPU kernels wait for every thread at each step, so a thread that
    must share its core with other work stalls all of them. On the 2-core test machine
    with other jobs running, a 5-step cpu-demo search took 99 s at torch's default of
    2 threads and 19 s at 1 thread; on an idle machine 2 threads gain far less than
    that. :func:`busy_cores` counts the busy cores.
    """
    if torch.get_num_threads() == 1:  # nothing to choose: spare the measurement (grid workers, OMP_NUM_THREADS=1)
        return 1
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return max(1, min(torch.get_num_threads(), round(len(cpus) - busy_cores(cpus))))


def busy_cores(cpus: list[int], window: float = 0.3) -> float:
    """How many of ``cpus`` other work keeps busy, measured over the next ``window`` seconds (Linux ``/proc/stat``),
    else the 1-minute load average. Why not the load average alone: it lags by about a minute, so a run started right
    after a heavy one (``scripts/setup.sh && hinas demo``, or after the test suite) saw busy cores on an idle machine
    and took 1 thread: the demo then ran 17.4 minutes on a 2-core AVX2 EPYC, its CPU time equal to its wall time."""
    stat = Path("/proc/stat")
    try:
        before = stat.read_text()
        time.sleep(window)
        return busy_between(before, stat.read_text(), cpus)
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def busy_between(before: str, after: str, cpus: list[int]) -> float:
    """Busy cores among ``cpus`` between two readings of ``/proc/stat``: the sum over them of the share of their time
    spent neither idle nor waiting on I/O (time the hypervisor gave elsewhere, steal, counts as busy). A core that
    either reading lacks (taken offline, or hidden by a container's view of ``/proc``) counts as idle."""
    def times(text: str) -> dict[int, tuple[int, int]]:
        out = {}
        for line in text.splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
                out[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])
        return out

    first, second = times(before), times(after)
    busy = 0.0
    for cpu in set(cpus) & first.keys() & second.keys():
        total = second[cpu][0] - first[cpu][0]
        if total > 0:
            busy += 1 - (second[cpu][1] - first[cpu][1]) / total
    return busy


def set_threads(threads: int = 0) -> int:
    """Compute on ``threads`` CPU threads (0: :func:`auto_threads`); process-wide. Returns the number set."""
    if threads < 0:
        raise ConfigError(f"threads: must not be negative (0 chooses), got {threads}")
    n = threads or auto_threads()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


CPU_BF16_PHASES = frozenset({"retrain"})
"""Phases that ``amp: auto`` runs in bf16 on a CPU with bf16 units. Measured by benchmarks/train_step.py (AMD EPYC with
AVX-512 bf16, no AMX; 1 thread, CPU time per step): the retraining step at the paper's batch (24 of 64x64, F=20) takes
3.1 s in bf16 channels_last against 7.1 s in float32 for sep3x3 [0,0,0], and 2.3-2.5 s against 4.3 s for DnCNN-17.
The search step gains less (13.9 against 17.6 s) and its selection is sensitive to rounding, so it stays float32."""


def amp_dtype(device: torch.device, amp: str, phase: str = "retrain") -> torch.dtype | None:
    """The autocast dtype of ``phase`` (``search``, ``retrain``); None is full float32.

    ``auto``: on CUDA bf16 (fp16 where bf16 is unsupported); on a CPU bf16 for the phases in ``CPU_BF16_PHASES`` when
    :func:`cpu_has_bf16`, float32 otherwise.
    """
    if amp == "off":
        return None
    if amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if phase in CPU_BF16_PHASES and cpu_has_bf16() else None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def memory_layout(device: torch.device, phase: str = "retrain") -> torch.memory_format:
    """channels_last on CUDA, and on a CPU for retraining, where it pairs with bf16 (measured: sep3x3's bf16 step 3.1 s
    channels_last against 3.4 s NCHW; DnCNN-17's 2.5 against 2.3); the search supernet's cells choose their own layouts
    inside, so its inputs stay NCHW on a CPU."""
    if device.type == "cuda" or phase == "retrain":
        return torch.channels_last
    return torch.contiguous_format


def bf16_on_cpu(x: torch.Tensor) -> bool:
    """``x`` is computed in bf16 on a CPU (a bf16 tensor, or under CPU bf16 autocast)."""
    return x.device.type == "cpu" and (x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))


def dilated_conv_operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dilated convolution's input and weight in the layout it must compute in: NCHW when computed in bf16 on a CPU
    with gradients to follow, where oneDNN (torch 2.13) computes the weight gradient of a dilated convolution in
    channels_last (chosen when either operand is) from uninitialised memory: errors up to 1e35, or NaN, dense and
    depthwise alike. Unchanged elsewhere."""
    if torch.is_grad_enabled() and bf16_on_cpu(x):
        return x.contiguous(), weight.contiguous()
    return x, weight


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``; None is plain float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(dtype: torch.dtype | None) -> str:
    """How metrics record a run's compute precision."""
    return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off inside: scores and the SSIM of the loss (variance as E[x^2] - mu^2 cancels) need full float32 on
    Ampere+ GPUs, where PyTorch lets convolutions use TF32 by default. A no-op on the CPU."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def prepare_device(device: torch.device, deterministic: bool = False) -> None:
    """cuDNN's autotuner picks the fastest kernels on CUDA, but they are not deterministic; ``deterministic`` turns
    it off and asks PyTorch for deterministic kernels, so a resumed CUDA run repeats bit for bit as a CPU run does."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


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

"""How a trained network runs at inference: its inference form in eager PyTorch, compiled, or in ONNX Runtime."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from hinas.errors import ConfigError
from hinas.hardware import cpu_has_bf16
from hinas.infer.export import inference_onnx
from hinas.infer.fast import FastNetwork, Separable, reconstruct
from hinas.nas.network import Network

Backend = Literal["torch", "compile", "onnxruntime"]
Precision = Literal["auto", "float32", "bf16"]

BACKENDS: tuple[str, ...] = ("torch", "compile", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bf16")


class InferenceModel(nn.Module):
    """A trained network's inference form behind a back-end; call it like the network in eval mode.

    ``torch``: :class:`FastNetwork` in eager PyTorch (on the CPU, each kernel in its best layout).
    ``compile``: the same through ``torch.compile`` (needs a C++ compiler on CPU;
    the first call of each input size compiles, a minute or more on two cores).
    ``onnxruntime``: the inference form exported to ONNX and run by ONNX Runtime
    on the CPU (any image size; the SR bicubic upscale stays in PyTorch).

    ``precision``: what the features are computed in. ``float32``: outputs equal the trained network's
    in eval mode to float32 rounding. ``bf16`` (the CPU needs native bf16, see
    :func:`~hinas.hardware.cpu_has_bf16`; CUDA needs bf16 support): weights and features in bf16 (from
    the image rounded to bf16), the output, the residual step and the SR upscale in float32; outputs
    within a few 1e-3 of float32 (tests/test_precision.py: within 0.02 dB PSNR on a partly fitted
    denoiser). ``auto``: bf16 on a CPU with native bf16 where the eager inference form is measured
    faster in it for this network (timed once, here, on a 128x128 input), else float32. ``self.precision``
    is the one chosen. ONNX Runtime runs float32 only.
    """

    def __init__(self, net: Network, backend: Backend = "torch", *, separable: Separable = "keep",
                 channels_last: bool | None = None, precision: Precision = "float32") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        device = next(net.parameters()).device
        if precision == "bf16" and not bf16_native(device):
            raise ConfigError(f"precision bf16 needs native bf16 support (AVX-512 bf16 or AMX on the CPU); {device} has none")
        if precision == "bf16" and backend == "onnxruntime":
            raise ConfigError("backend onnxruntime runs float32 only; use precision float32 or auto")
        self.genotype, self.backend = net.genotype, backend
        channels_last = device.type == "cpu" if channels_last is None else channels_last
        candidates = [precision] if precision != "auto" else ["float32", "bf16"] if _auto_bf16(device, backend) else ["float32"]
        forms = {p: FastNetwork(net, separable, channels_last, DTYPES[p]) for p in candidates}
        if len(forms) > 1:
            x = torch.rand(1, net.genotype.space.in_channels, 128, 128)
            self.precision = faster({p: functools.partial(_timed, m, x) for p, m in forms.items()})
        else:
            self.precision = candidates[0]
        self.fast = forms[self.precision]
        if backend == "compile":
            self._run = torch.compile(self.fast)
        elif backend == "onnxruntime":
            if device.type != "cpu":
                raise ConfigError(f"backend onnxruntime runs on the CPU; the network is on {device} "
                                  "(use backend torch or compile)")
            self._run = _OnnxRuntime(self.fast)
        else:
            self._run = self.fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._run(x)


DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def bf16_native(device: torch.device) -> bool:
    """bf16 is computed natively here (elsewhere it is emulated, slower than float32)."""
    return cpu_has_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported()


def _auto_bf16(device: torch.device, backend: str) -> bool:
    """``auto`` considers bf16 on CPUs with native bf16 only (not measured on GPUs) and not for ONNX Runtime."""
    return device.type == "cpu" and backend != "onnxruntime" and cpu_has_bf16()


def faster(candidates: dict[str, Callable[[], float]], rounds: int = 3) -> str:
    """The candidate whose timing (a call returning seconds) is least, each at its best over ``rounds``
    interleaved rounds after a warm-up call: interleaved so that a shared machine's load falls on all alike."""
    for time_one in candidates.values():
        time_one()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, time_one in candidates.items():
            best[name] = min(best[name], time_one())
    return min(best, key=best.__getitem__)


def _timed(model: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


class _OnnxRuntime:
    """The inference form's residual predictor as an ONNX Runtime session (any size), plus the residual step in PyTorch."""

    def __init__(self, fast: FastNetwork) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("backend onnxruntime needs the onnxruntime package: pip install 'hinas[onnx]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(inference_onnx(fast), options, providers=["CPUExecutionProvider"])
        self.task, self.scale = fast.task, fast.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (residual,) = self.session.run(None, {"degraded": x.detach().float().contiguous().numpy()})
        return reconstruct(x, torch.from_numpy(residual), self.task, self.scale)

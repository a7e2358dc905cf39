"""How a trained network runs at inference: its inference form in eager PyTorch, compiled, or in ONNX Runtime."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hinas.errors import ConfigError
from hinas.infer.export import inference_onnx
from hinas.infer.fast import FastNetwork, Separable, reconstruct
from hinas.nas.network import Network

Backend = Literal["torch", "compile", "onnxruntime"]

BACKENDS: tuple[str, ...] = ("torch", "compile", "onnxruntime")

class InferenceModel(nn.Module):
    """A trained network's inference form behind a back-end; call it like the network in eval mode.

    ``torch``: :class:`FastNetwork` in eager PyTorch (on the CPU, each kernel in its best layout).
    ``compile``: the same through ``torch.compile`` (needs a C++ compiler on CPU;
    the first call of each input size compiles, a minute or more on two cores).
    ``onnxruntime``: the inference form exported to ONNX and run by ONNX Runtime
    on the CPU (any image size; the SR bicubic upscale stays in PyTorch).
    Outputs equal the trained network's in eval mode to float32 rounding.
    """

    def __init__(self, net: Network, backend: Backend = "torch", *, separable: Separable = "keep",
                 channels_last: bool | None = None) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
        device = next(net.parameters()).device
        self.genotype, self.backend = net.genotype, backend
        self.fast = FastNetwork(net, separable, device.type == "cpu" if channels_last is None else channels_last)
        if backend == "compile":
            self._run = torch.compile(self.fast)
        elif backend == "onnxruntime":
            if device.type != "cpu":
                raise ConfigError(f"backend onnxruntime runs on the CPU; the network is on {device} (use backend torch or compile)")
            self._run = _OnnxRuntime(self.fast)
        else:
            self._run = self.fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._run(x)

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

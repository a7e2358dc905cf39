"""Export a derived network to ONNX, for deployment without PyTorch."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hinas.errors import OutputError
from hinas.files import atomic_write_bytes
from hinas.nas.network import Network

if TYPE_CHECKING:
    from hinas.infer.fast import FastNetwork


def export_onnx(model: Network, path: str | Path, size: tuple[int, int] = (64, 64), opset: int = 17) -> Path:
    """Write ``model`` as ONNX with input ``degraded`` and output ``restored``.

    Denoisers accept any batch and image size. SR networks keep the traced
    input size (``size``, low-resolution): their bicubic residual is a matrix
    product whose weights depend on the image size. Uses the TorchScript-based
    exporter, which needs no extra packages and is ten times faster here than
    the dynamo one for these graphs. Written atomically; an unwritable ``path``
    raises :class:`OutputError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"export_onnx: path: cannot create the folder of {path} ({err.strerror or err})") from None
    space = model.genotype.space
    x = torch.rand(1, space.in_channels, *size, device=next(model.parameters()).device)
    axes = {0: "batch"} if space.task == "sr" else {0: "batch", 2: "height", 3: "width"}
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    _export(model, x, buffer, axes, opset)
    model.train(was_training)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OutputError as err:
        raise OutputError(f"export_onnx: path: {err}") from None
    return path


class _Residual(nn.Module):
    def __init__(self, fast: FastNetwork) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast.residual(x)


def inference_onnx(fast: FastNetwork, opset: int = 17) -> bytes:
    """The inference form's residual predictor (output ``residual``) as ONNX bytes, for any batch and image size.

    The residual step (subtract for denoising, add to the bicubic upscale after
    pixel shuffle for SR) is left to the caller, so SR is not tied to one size.
    """
    x = torch.rand(1, fast.stem1.weight.shape[1], 32, 32, device=fast.stem1.weight.device)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    _export(_Residual(fast), x, buffer, axes, opset, output="residual")
    return buffer.getvalue()


def _export(module: nn.Module, x: torch.Tensor, f, axes: dict[int, str], opset: int, output: str = "restored") -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=opset, input_names=["degraded"],
                          output_names=[output], dynamic_axes={"degraded": axes, output: axes})

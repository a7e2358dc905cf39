"""Export a derived network to ONNX, for deployment without PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .network import Network


def export_onnx(model: Network, path: str | Path, size: tuple[int, int] = (64, 64), opset: int = 17) -> Path:
    """Write ``model`` as ONNX with input ``degraded`` and output ``restored``.

    Denoisers accept any batch and image size. SR networks keep the traced
    input size (``size``, low-resolution): their bicubic residual is a matrix
    product whose weights depend on the image size. Uses the TorchScript-based
    exporter, which needs no extra packages and is ten times faster here than
    the dynamo one for these graphs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    space = model.genotype.space
    x = torch.rand(1, space.in_channels, *size, device=next(model.parameters()).device)
    axes = {0: "batch"} if space.task == "sr" else {0: "batch", 2: "height", 3: "width"}
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["degraded"],
                          output_names=["restored"], dynamic_axes={"degraded": axes, "restored": axes})
    model.train(was_training)
    return path

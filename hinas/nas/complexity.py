"""Parameter and FLOP counts, reported the way papers should: true millions, FLOPs = 2 x multiply-adds."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...], by_depth: int | None = None) -> int | dict[str, int]:
    """Convolution and linear FLOPs (2 x MACs, plus one per bias) of one forward pass on ``input_shape`` (N, C, H, W).

    Element-wise work (BatchNorm, activations, sums) is not counted, as in the
    usual tables. With ``by_depth`` the count is split by module name truncated
    to that many dotted parts (e.g. ``layers.0``), for per-layer tables.
    """
    totals: dict[str, int] = defaultdict(int)
    hooks = []

    def hook(name: str):
        def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                macs = out.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            else:
                macs = out.numel() * module.in_features
            bias = out.numel() if module.bias is not None else 0
            key = ".".join(name.split(".")[:by_depth]) if by_depth else "total"
            totals[key] += 2 * macs + bias

        return count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return dict(totals) if by_depth else totals["total"]


def layer_table(model: nn.Module, input_shape: tuple[int, ...], depth: int = 2) -> list[dict[str, float | str]]:
    """Parameters and GFLOP per part of a model (module names cut to ``depth`` parts), in forward order."""
    flops = count_flops(model, input_shape, by_depth=depth)
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        params[".".join(name.split(".")[:depth])] += p.numel()
    names = list(dict.fromkeys([*flops, *params]))
    return [{"part": n, "params": params.get(n, 0), "gflops": flops.get(n, 0) / 1e9} for n in names]

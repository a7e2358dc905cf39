"""Training losses of the paper (a pixel loss plus a log-SSIM term), the weights' optimisers and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hinas.eval.metrics import ssim_map


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, pixel: str, ssim_weight: float, scale: float = 1.0,
                     batch_mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean) -> torch.Tensor:
    """``scale * (pixel_loss + ssim_weight * -log10 SSIM)``: the paper's search uses scale 0.5, retraining 1.

    ``batch_mean`` averages the SSIM map before the log; data-parallel runs pass a mean over every
    rank's share of the batch (the log of a mean is not the mean of per-rank logs).
    """
    base = F.mse_loss(pred, target) if pixel == "mse" else F.l1_loss(pred, target)
    if ssim_weight:
        ssim = batch_mean(ssim_map(pred.float(), target.float())).clamp_min(1e-4)
        base = base - ssim_weight * torch.log10(ssim)
    return scale * base


def search_lr(epoch: float, total: int, lr: float, lr_min: float, cycle: int, power: float) -> float:
    """Weight learning rate at fractional ``epoch`` of ``total``: cosine restarts x poly decay, never below lr_min."""
    envelope = lr * (1 - epoch / total) ** power
    cosine = 0.5 * (1 + math.cos(math.pi * (epoch % cycle) / cycle))
    return lr_min + max(envelope - lr_min, 0.0) * cosine


def retrain_lr(step: int, total: int, lr: float, schedule: str, power: float) -> float:
    """Retraining learning rate at ``step`` of ``total``.

    ``poly``: the paper's decay, ``lr * (1 - t) ** power``; ``cosine``: half a cosine from ``lr`` to 0;
    ``onecycle``: a linear warm-up from ``lr / 25`` over the first 30% of the steps, then a cosine to 0
    (Smith's one-cycle shape, which lets Adam start at a learning rate that would diverge from random weights).
    """
    t = min(step / total, 1.0)
    if schedule == "poly":
        return lr * (1 - t) ** power
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        if t < ONECYCLE_WARMUP:
            return lr * (1 + 24 * t / ONECYCLE_WARMUP) / 25
        return lr * 0.5 * (1 + math.cos(math.pi * (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)))
    raise ValueError(f"unknown schedule {schedule!r}: expected poly, cosine or onecycle")


ONECYCLE_WARMUP = 0.3
"""Fraction of a one-cycle schedule spent warming up (PyTorch's OneCycleLR default)."""


def weight_optimizer(params: list[torch.nn.Parameter], name: str, lr: float, momentum: float,
                     weight_decay: float) -> torch.optim.Optimizer:
    """``sgd`` (the paper's, with momentum), ``adam`` (L2 penalty in the gradient) or ``adamw`` (decoupled decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: expected sgd, adam or adamw")

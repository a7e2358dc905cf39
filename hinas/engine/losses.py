"""Training losses of the paper: a pixel loss plus a log-SSIM term, and its learning-rate schedules."""

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


def poly_lr(step: int, total: int, lr: float, power: float) -> float:
    """Retraining schedule: poly(power) decay from ``lr`` to 0 over ``total`` steps."""
    return lr * (1 - step / total) ** power

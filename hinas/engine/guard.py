"""Numerical faults: a step whose loss or gradient is NaN or infinite never reaches the parameters."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hinas.errors import NonFiniteError


def checked_step(compute: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, grad_scaler: torch.amp.GradScaler,
                 params: Sequence[torch.nn.Parameter], what: str, clip: float = 0.0,
                 sync: Callable[[Sequence[torch.nn.Parameter]], None] | None = None,
                 any_rank: Callable[[bool], bool] | None = None, retries: int = 0,
                 on_retry: Callable[[str], None] | None = None) -> float:
    """The loss ``compute`` returns, backward, ``sync`` of the gradients (their average over data-parallel ranks),
    optional gradient clipping to norm ``clip``, then the optimiser step; returns the loss.

    Raises :class:`NonFiniteError` before the step when the loss or the gradient norm is non-finite, so
    parameters and optimiser state stay as they were. Before that, a fault is computed again (``compute`` on the
    same batch) up to ``retries`` times, each reported to ``on_retry``: on a CPU in bf16 oneDNN (torch 2.13) now and
    then returns a gradient of 1e30 that the same computation on the same weights and batch does not repeat, and a
    rollback for it would cost hundreds of steps. The norm is taken after ``sync``, so a fault on any rank
    stops every rank at the same step; ``any_rank`` makes the decision one for all ranks (a NaN loss on one rank
    alone would otherwise roll back that rank only). Under fp16 autocast the grad scaler owns gradient overflow (it
    skips the step and lowers its scale), so there only a non-finite loss is a fault, and it is not retried. The loss
    and the norm come back in one device sync.
    """
    attempts = 1 + (0 if grad_scaler.is_enabled() else retries)
    for attempt in range(1, attempts + 1):
        loss = compute()
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        if sync is not None:
            sync(params)
        grad_scaler.unscale_(optimizer)
        # max_norm=inf measures without clipping (grads are multiplied by exactly 1)
        norm = torch.nn.utils.clip_grad_norm_(params, clip or math.inf)
        value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()
        bad = not math.isfinite(value) or (not math.isfinite(norm_value) and not grad_scaler.is_enabled())
        if any_rank is not None:
            bad = any_rank(bad)
        if not bad:
            grad_scaler.step(optimizer)
            grad_scaler.update()
            return value
        message = f"non-finite {what}: loss {value}, gradient norm {norm_value}"
        if attempt < attempts and on_retry is not None:
            on_retry(f"{message}; computed again (attempt {attempt + 1} of {attempts})")
    raise NonFiniteError(message)

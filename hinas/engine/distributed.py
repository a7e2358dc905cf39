"""Data-parallel search and retraining under ``torchrun``: one process per device, every replica identical.

``torchrun --nproc_per_node=N -m hinas search ...`` starts N processes that find WORLD_SIZE, RANK and
LOCAL_RANK in their environment and join a process group (NCCL on CUDA, gloo on CPU). The configured
``batch`` stays the global batch, and the run computes what one process with that batch computes, up
to floating-point rounding:

- data: item i of a PatchDataset depends only on (seed, epoch, i), so the global patch stream is the
  same at any world size; rank r takes its contiguous slice of every global batch (:class:`RankBatches`);
- BatchNorm: training statistics cover the global batch (:func:`global_batch_norm`, for BatchNorm2d and the
  fused cell's ScaledBatchNorm), so activations and running buffers equal the single-process ones and are
  the same on every rank;
- loss: the log-SSIM term takes its SSIM mean over the global batch (:meth:`Context.batch_mean`),
  because the log of a mean is not the mean of per-rank logs; the pixel term is a plain mean, which
  averaging gradients over equal shares already makes global;
- gradients: averaged over ranks after every backward (:meth:`Context.sync_grads`), so weights,
  alphas and betas take identical steps everywhere and every rank derives the same genotype;
- validation: images are dealt out over ranks and the per-image results gathered (:meth:`Context.evaluate`),
  so every rank selects the same epoch; :meth:`Context.check_replicas` proves the ranks agree at the end.

Only rank 0 writes the run directory; the other ranks write theirs into a scratch folder removed at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from hinas.errors import ConfigError, HinasError
from hinas.eval.scoring import evaluate_model
from hinas.files import write_json
from hinas.nas.ops import NEGATIVE_SLOPE
from hinas.nas.supercell import ScaledBatchNorm


class ReplicaError(HinasError, RuntimeError):
    """Ranks of one data-parallel run hold different weights or reached different results."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in the run: its rank, the number of processes, its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def run_path(self, out: str | Path) -> Path:
        """``out`` on rank 0; elsewhere a scratch folder removed at exit, so rank 0 alone writes run artefacts."""
        if self.is_main:
            return Path(out)
        scratch = tempfile.mkdtemp(prefix=f"hinas-rank{self.rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return Path(scratch)

    def batches(self, length: int, batch: int) -> RankBatches:
        """This rank's batch sampler over a sequential stream of ``length`` items with global ``batch``."""
        return RankBatches(length, batch, self.rank, self.world_size)

    def replicate(self, model: nn.Module) -> nn.Module:
        """Make ``model`` (already on this rank's device) a replica: global-batch BatchNorm, rank 0's parameters and buffers.

        Every rank seeds alike, so the broadcast changes nothing unless something drew random numbers unevenly.
        """
        if self.world_size == 1:
            return model
        _use_global_batchnorm(model, self.device)
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.detach(), src=0)
        return model

    def sync_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over ranks, in place, with one all-reduce of a flattened bucket.

        Not DistributedDataParallel: the search alternates an architecture step and a weight step on
        different batches, each stepping one parameter group while backward fills gradients of both, so
        DDP would reduce both groups on every backward (twice the traffic), needs unused-parameter and
        no_sync handling, and wraps the model (``model.module``, prefixed state-dict keys). Reducing
        exactly the group about to step, after backward, is simpler to check; it forgoes overlapping
        communication with backward, small next to the per-layer BatchNorm reductions. Parameters
        without a gradient keep none: which ones have one is fixed by the graph, alike on every rank.
        """
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(chunk.view_as(grad))

    def batch_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` over the global batch, differentiable; every rank holds an equal share."""
        if self.world_size == 1:
            return x.mean()
        return _SumOverRanks.apply(x.sum()) / (x.numel() * self.world_size)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any: one decision (roll back, stop) that no rank takes alone."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def agreed_signal(self, received: int | None) -> int | None:
        """The stop signal any rank received (the highest number), on every rank, so all ranks stop at the same step."""
        if self.world_size == 1:
            return received
        value = torch.tensor([received or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item()) or None

    def average(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks of per-step numbers (the logged losses); every rank passes as many."""
        if self.world_size == 1 or not values:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return (total / self.world_size).tolist()

    def evaluate(self, model: nn.Module, images: Sequence[tuple[str, torch.Tensor]], **kwargs: Any) -> dict[str, Any]:
        """:func:`evaluate_model` with the images dealt round-robin over ranks; every rank gets the whole result.

        The means are taken over the gathered per-image rows in the original order, so they are what one
        process would report.
        """
        if self.world_size == 1:
            return evaluate_model(model, images, **kwargs)
        share = [images[i] for i in range(self.rank, len(images), self.world_size)]
        parts: list[dict[str, Any] | None] = [None] * self.world_size
        dist.all_gather_object(parts, evaluate_model(model, share, **kwargs) if share else None)
        rows = [parts[i % self.world_size]["per_image"][i // self.world_size] for i in range(len(images))]
        result = {**parts[0], "images": len(rows), "per_image": rows}
        for key in rows[0]:
            if key != "name":
                result[key] = sum(r[key] for r in rows) / len(rows)
        return result

    def check_replicas(self, path: Path, model: nn.Module, **results: Any) -> None:
        """Gather every rank's digest of ``model``'s parameters and buffers and its ``results``; rank 0 writes them
        to ``path``. Any difference from rank 0 is an error: the run would not be what one process computes.
        """
        if self.world_size == 1:
            return
        mine = {"rank": self.rank, "state_sha256": state_digest(model), **results}
        every: list[dict[str, Any] | None] = [None] * self.world_size
        dist.all_gather_object(every, mine)
        if self.is_main:
            write_json(path, {"world_size": self.world_size, "replicas": every})
        differ = [r["rank"] for r in every if {**r, "rank": 0} != {**every[0], "rank": 0}]
        if differ:
            raise ReplicaError(f"ranks {differ} differ from rank 0 at the end of the run; see {path} on rank 0")


def is_main_process() -> bool:
    """False only in a ``torchrun`` worker of rank > 0 (read from the environment, so usable before :func:`init`)."""
    return int(os.environ.get("RANK", "0")) == 0


def init(device: torch.device) -> Context:
    """This process's :class:`Context`; under ``torchrun`` (WORLD_SIZE > 1) joins the process group first.

    CUDA runs use the NCCL backend on ``cuda:LOCAL_RANK`` (the configured device's index is ignored),
    CPU runs gloo. Calling it again in the same process reuses the group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return Context(rank, world, device)


class RankBatches(Sampler[list[int]]):
    """Rank ``rank``'s share of each global batch of the sequential stream 0..length-1.

    Step s covers items [s*B, (s+1)*B) of the stream; the rank takes the contiguous B/world slice at
    ``rank``, so the ranks' slices together are exactly the single-process batch. An incomplete last
    global batch is dropped. ``start`` (a multiple of B) is the first item still to serve: a resumed
    epoch skips its used batches without drawing them.
    """

    def __init__(self, length: int, batch: int, rank: int = 0, world_size: int = 1) -> None:
        if batch % world_size:
            raise ConfigError(f"batch: the global batch of {batch} does not split evenly over {world_size} processes; "
                              f"use a multiple of {world_size}")
        self.length, self.batch, self.local, self.rank = length, batch, batch // world_size, rank
        self.start = 0

    def __len__(self) -> int:
        return (self.length - self.start) // self.batch

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(len(self)):
            first = self.start + step * self.batch + self.rank * self.local
            yield list(range(first, first + self.local))


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward sums the incoming gradients over ranks too.

    Every rank's loss depends on the sum, so the gradient of the summed losses with respect to one
    rank's share is the sum of all ranks' upstream gradients. Averaging the parameter gradients
    afterwards (:meth:`Context.sync_grads`) turns that into the gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor | None,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Training-mode batch normalisation of ``x`` with statistics over the global batch of every rank.

    Updates ``bn``'s running buffers as BatchNorm2d would; ``weight``/``bias`` (per channel, or None)
    scale and shift the result. Not torch.nn.SyncBatchNorm: it refuses CPU tensors, and CI checks data
    parallelism with gloo on CPU, so one implementation serves CPU and GPU alike. Per call it costs
    one all-reduce of 2C numbers forward and one backward. As BatchNorm does, it computes in float32
    whatever the input (bf16 under autocast) and returns the input's dtype; sums accumulate in float64
    so that E[x^2] - E[x]^2 does not cancel. Every rank holds an equal share of the batch.
    """
    xf, c, dims = x.float(), x.shape[1], (0, 2, 3)
    n = x.numel() // c * dist.get_world_size()
    sums = _SumOverRanks.apply(torch.cat([xf.sum(dims, dtype=torch.float64), xf.square().sum(dims, dtype=torch.float64)]))
    mean = sums[:c] / n
    var = sums[c:] / n - mean.square()
    if bn.track_running_stats:
        _track(bn, mean.detach(), var.detach() * n / (n - 1))
    shape = (1, c, 1, 1)
    y = (xf - mean.float().view(shape)) * torch.rsqrt(var + bn.eps).float().view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y.to(x.dtype)


@torch.no_grad()
def _track(bn: nn.BatchNorm2d, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    """Running averages updated as BatchNorm2d updates them (unbiased variance; momentum None: cumulative)."""
    bn.num_batches_tracked += 1
    factor = bn.momentum if bn.momentum is not None else 1 / int(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_(unbiased_var.to(bn.running_var.dtype), alpha=factor)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch (:func:`global_batch_norm`); eval mode is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        return global_batch_norm(self, x, self.weight, self.bias)


class GlobalScaledBatchNorm(ScaledBatchNorm):
    """The fused cell's ScaledBatchNorm with training statistics over the global batch; eval mode is unchanged."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x, scale)
        return global_batch_norm(self, x, scale, None)

    def leaky(self, x: torch.Tensor) -> torch.Tensor:
        """LeakyReLU of the global-batch normalisation (the single-process memory saving does not apply)."""
        if not (self.training and dist.is_initialized()):
            return super().leaky(x)
        return F.leaky_relu(self(x), NEGATIVE_SLOPE)


def _global(bn: nn.Module) -> nn.Module | None:
    """The global-batch twin of a BatchNorm module (exact types only: a subclass may normalise otherwise), or None."""
    if type(bn) is nn.BatchNorm2d:
        return GlobalBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if type(bn) is ScaledBatchNorm:
        twin = GlobalScaledBatchNorm(bn.num_features)
        twin.eps, twin.momentum = bn.eps, bn.momentum
        return twin
    return None


def _use_global_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Replace every BatchNorm2d and ScaledBatchNorm below ``module`` by its global-batch twin holding the same state."""
    for name, child in module.named_children():
        twin = _global(child)
        if twin is None:
            _use_global_batchnorm(child, device)
            continue
        twin.load_state_dict(child.state_dict())
        module.add_module(name, twin.to(device))


def state_digest(model: nn.Module) -> str:
    """sha256 over the names and bytes of every parameter and buffer: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

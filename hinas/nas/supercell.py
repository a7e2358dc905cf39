"""The fused search cell: the reference cell's mathematics, computed state by state with stacked operations.

Every state of a cell (s1, s0, then each node but the last) feeds all later
nodes through the same candidate operations. For the E edges leaving a state
the fused cell

- applies the shared pre-activation LeakyReLU once, not once per (edge, op);
- runs a ``conv`` op as one convolution with the E edges' kernels stacked on
  the output channels, and a ``sep`` op as depthwise convolutions over E*C
  channels and block-diagonal pointwise ones;
- normalises a stack with one BatchNorm: search BN is affine-free with
  per-channel batch statistics, so BN of the stack is the stack of per-edge
  BNs, and the mixing weight softmax(alpha)[edge, op] enters as BN's scale;
- never computes the zero op, and runs ops without a ``Stacking`` (e.g.
  user-registered ones) edge by edge, as built;
- works in channels_last, and keeps less for the backward pass: node sums
  are formed as terms arrive, the sep ops' depthwise->pointwise pairs are
  recomputed, their middle BN+LeakyReLU keeps only its output.

Measured on the paper's denoising supernet (2-core CPU, benchmarks/supernet.py):
a step needs less than half the memory of the reference cell, and is faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hinas.hardware import dilated_conv_operands
from hinas.nas.cells import ReferenceCell, SearchCell
from hinas.nas.ops import NEGATIVE_SLOPE, Stacking, get_op
from hinas.nas.space import SearchSpace

CHANNELS_LAST = torch.channels_last
"""The cell's layout: oneDNN's narrow and depthwise convolutions run several times faster in it than in NCHW on CPU."""

View = Callable[[torch.Tensor], torch.Tensor]
"""Picks one edge's tensor (a view) out of a stacked one."""
Links = dict[str, tuple[str, View]]
"""Fused key -> (reference key, view), relative to one stacked module and one edge."""


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t


class _NormLeaky(torch.autograd.Function):
    """Batch-statistics BN without affine parameters, then LeakyReLU, saving only the output and 1/std.

    Both steps are invertible per element (a positive scale per channel; a
    positive slope), so the backward pass recovers the normalised input from
    the output instead of keeping the BN input alive as well.
    """

    @staticmethod
    def forward(ctx, x, running_mean, running_var, momentum, eps):  # type: ignore[override]
        y, _, invstd = torch.native_batch_norm(x, None, None, running_mean, running_var, True, momentum, eps)
        y = F.leaky_relu_(y, NEGATIVE_SLOPE)
        ctx.eps = eps
        ctx.save_for_backward(y, invstd)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        y, invstd = ctx.saved_tensors
        xhat = F.leaky_relu(y, 1 / NEGATIVE_SLOPE)
        grad = torch.ops.aten.leaky_relu_backward(grad, y, NEGATIVE_SLOPE, True)
        unit = torch.ones_like(invstd)
        # BN's backward written for input xhat (mean 0, 1/std 1), with weight 1/std restoring the true scale.
        dx = torch.ops.aten.native_batch_norm_backward(
            grad, xhat, invstd, None, None, torch.zeros_like(invstd), unit, True, ctx.eps, [True, False, False]
        )[0]
        return dx, None, None, None, None


class ScaledBatchNorm(nn.BatchNorm2d):
    """Affine-free BatchNorm whose output is multiplied by a per-channel ``scale`` given at call time, in one kernel."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, scale, None, self.training, self.momentum, self.eps)

    def leaky(self, x: torch.Tensor) -> torch.Tensor:
        """LeakyReLU(BN(x)); while training, the backward pass keeps only the output, not ``x`` as well."""
        if not (self.training and torch.is_grad_enabled()):
            return F.leaky_relu(self(x), NEGATIVE_SLOPE)
        self.num_batches_tracked.add_(1)
        return _NormLeaky.apply(x, self.running_mean, self.running_var, self.momentum, self.eps)

    def edge_links(self, name: str, ref: str, rows: slice) -> Links:
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[rows]

        return {
            f"{name}.running_mean": (f"{ref}.running_mean", pick),
            f"{name}.running_var": (f"{ref}.running_var", pick),
            f"{name}.num_batches_tracked": (f"{ref}.num_batches_tracked", _whole),
        }


class StackedConv(nn.Module):
    """A ``conv`` op (act, k x k conv, BN) for E edges: one conv with E*C output channels, edge-major."""

    def __init__(self, channels: int, edges: int, stacking: Stacking) -> None:
        super().__init__()
        k, self.dilation = stacking.kernel, stacking.dilation
        self.padding = self.dilation * (k - 1) // 2
        self.weight = nn.Parameter(torch.empty(edges * channels, channels, k, k))
        self.bn = ScaledBatchNorm(edges * channels)

    def forward(self, a: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The E edges' terms stacked edge-major, given their mixing weights for this op."""
        a, weight = dilated_conv_operands(a, self.weight) if self.dilation > 1 else (a, self.weight)
        y = F.conv2d(a, weight, padding=self.padding, dilation=self.dilation)
        return self.bn(y, weights.repeat_interleave(a.shape[1]))

    def edge_links(self, slot: int) -> Links:
        """Keys follow ``ops.act_conv_bn``: Sequential(act, conv, bn)."""
        c = self.weight.shape[1]
        rows = slice(slot * c, (slot + 1) * c)
        return {"weight": ("1.weight", lambda t: t[rows]), **self.bn.edge_links("bn", "2", rows)}


def _depthwise_pointwise(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, padding: int, copies: int = 1) -> torch.Tensor:
    """Pointwise conv of a depthwise conv of ``copies`` stacked copies of ``x``."""
    x = torch.cat([x] * copies, dim=1) if copies > 1 else x  # cat, unlike repeat, keeps channels_last
    return F.conv2d(F.conv2d(x, dw, padding=padding, groups=x.shape[1]), pw)


def _recomputed(fn: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    """``fn(*args)`` keeping only its inputs for the backward pass: for cheap ops whose outputs would cost memory."""
    return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)


class StackedSep(nn.Module):
    """A ``sep`` op ((act, depthwise k x k, pointwise, BN) twice) for E edges, stacked edge-major.

    The depthwise convs run on E*C channels (the shared input copied E times
    first), the pointwise ones as block-diagonal dense 1x1 convs: both measured
    faster on CPU than a channel-multiplier depthwise conv and grouped 1x1
    convs. Each depthwise->pointwise pair is recomputed in the backward pass
    rather than stored: it is cheap, and its output is as large as the stack.
    """

    def __init__(self, channels: int, edges: int, stacking: Stacking) -> None:
        super().__init__()
        c, e, k = channels, edges, stacking.kernel
        self.padding = (k - 1) // 2
        self.dw1 = nn.Parameter(torch.empty(e * c, 1, k, k))
        self.pw1 = nn.Parameter(torch.empty(e, c, c))
        self.bn1 = ScaledBatchNorm(e * c)
        self.dw2 = nn.Parameter(torch.empty(e * c, 1, k, k))
        self.pw2 = nn.Parameter(torch.empty(e, c, c))
        self.bn2 = ScaledBatchNorm(e * c)

    def forward(self, a: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The E edges' terms stacked edge-major, given their mixing weights for this op."""
        e = len(self.pw1)
        x = _recomputed(_depthwise_pointwise, a, self.dw1, torch.block_diag(*self.pw1)[..., None, None], self.padding, e)
        x = _recomputed(_depthwise_pointwise, self.bn1.leaky(x), self.dw2, torch.block_diag(*self.pw2)[..., None, None],
                        self.padding)
        return self.bn2(x, weights.repeat_interleave(a.shape[1]))

    def edge_links(self, slot: int) -> Links:
        """Keys follow ``ops.sep_conv``: Sequential(act, dw, pw, bn, act, dw, pw, bn)."""
        c = self.pw1.shape[1]
        rows = slice(slot * c, (slot + 1) * c)
        return {
            "dw1": ("1.weight", lambda t: t[rows]),
            "pw1": ("2.weight", lambda t: t[slot, :, :, None, None]),
            **self.bn1.edge_links("bn1", "3", rows),
            "dw2": ("5.weight", lambda t: t[rows]),
            "pw2": ("6.weight", lambda t: t[slot, :, :, None, None]),
            **self.bn2.edge_links("bn2", "7", rows),
        }


SHARED_INPUT: dict[str, type[StackedConv | StackedSep]] = {"conv": StackedConv, "sep": StackedSep}
"""Op kinds that read the state through the shared pre-activation, and the module running them for all its edges."""


class StateEdges(nn.Module):
    """Every edge leaving one state: built-in ops on the shared pre-activation, the identity, other ops as built."""

    def __init__(self, space: SearchSpace, state: int, reference: ReferenceCell) -> None:
        super().__init__()
        self.channels = c = reference.channels
        self.targets = range(max(0, state - 1), space.nodes)
        self.edges = [space.edge_index(node, state) for node in self.targets]
        # the same rows as an index on the module's device: indexing alpha with a Python list would copy it to the GPU
        # (and wait for the copy) at every state of every cell of every step
        self.register_buffer("edge_rows", torch.tensor(self.edges, dtype=torch.long), persistent=False)
        self.shared = nn.ModuleDict()
        self.identity: list[int] = []
        self.single = nn.ModuleDict()  # "slot_op" -> the reference cell's own module
        for o, name in enumerate(space.ops):
            op = get_op(name)
            kind = op.stacking.kind if op.stacking else None
            if op.is_zero:
                continue
            if kind in SHARED_INPUT:
                self.shared[str(o)] = SHARED_INPUT[kind](c, len(self.edges), op.stacking)
            elif kind == "identity":
                self.identity.append(o)
            else:
                for slot, e in enumerate(self.edges):
                    self.single[f"{slot}_{o}"] = reference.edges[e].ops[o]

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(node, term) for every term an outgoing edge adds to its node; ``weights`` are the edges' rows of alpha."""
        if self.shared:
            a = F.leaky_relu(h, NEGATIVE_SLOPE)
            stack = None
            for o, op in self.shared.items():
                y = op(a, weights[:, int(o)])
                stack = y if stack is None else stack.add_(y)  # in place: BN keeps its input, not its output
            yield from zip(self.targets, stack.split(self.channels, dim=1))
        for o in self.identity:
            for slot, node in enumerate(self.targets):
                yield node, weights[slot, o] * h
        for key, op in self.single.items():
            slot, o = map(int, key.split("_"))
            yield self.targets[slot], weights[slot, o] * op(h)

    def links(self) -> Iterator[tuple[str, str, View]]:
        """(own key, reference cell key, view) for every tensor of this module."""
        for slot, e in enumerate(self.edges):
            for o, op in self.shared.items():
                for key, (ref, view) in op.edge_links(slot).items():
                    yield f"shared.{o}.{key}", f"edges.{e}.ops.{o}.{ref}", view
        for key, op in self.single.items():
            slot, o = map(int, key.split("_"))
            for name in op.state_dict():
                yield f"single.{key}.{name}", f"edges.{self.edges[slot]}.ops.{o}.{name}", _whole


class StackedCell(SearchCell):
    """The default search cell: the reference cell computed state by state with stacked operations."""

    def __init__(self, space: SearchSpace, channels: int) -> None:
        super().__init__(space, channels)
        # Initial weights come from a reference cell, so a seed gives the same supernet in either implementation.
        reference = ReferenceCell(space, channels)
        self.states = nn.ModuleList(StateEdges(space, t, reference) for t in range(space.nodes + 1))
        self.load_reference_state(reference.state_dict())

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Nodes are summed as their terms arrive, so each state's stacked outputs are freed before the next state's.
        nodes: list[torch.Tensor | None] = [None] * self.space.nodes
        states = [s1.contiguous(memory_format=CHANNELS_LAST), s0.contiguous(memory_format=CHANNELS_LAST)]
        for t, edges in enumerate(self.states):
            if t >= 2:  # node t - 2 has all its terms once every earlier state has been expanded
                states.append(nodes[t - 2])
            for node, term in edges(states[t], weights.index_select(0, edges.edge_rows)):
                total = nodes[node]
                nodes[node] = term if total is None else total + term
        states.append(nodes[-1])
        return torch.cat(states[2:], dim=1)

    def _links(self) -> Iterator[tuple[str, str, View]]:
        for t, edges in enumerate(self.states):
            for key, ref, view in edges.links():
                yield f"states.{t}.{key}", ref, view

    def reference_state(self, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        tensors = self.state_dict() if tensors is None else tensors
        return {ref: view(tensors[key]) for key, ref, view in self._links() if key in tensors}

    def load_reference_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = self.state_dict()  # detached tensors sharing storage with the parameters and buffers
        links = list(self._links())
        mismatch = sorted(set(state) ^ {ref for _, ref, _ in links})
        if mismatch:
            raise KeyError(f"reference state and fused cell disagree on: {', '.join(mismatch[:5])}")
        with torch.no_grad():
            for key, ref, view in links:
                view(own[key]).copy_(state[ref])

"""The inference form of a derived network: the same function as the trained network in eval mode, in far fewer kernels.

Why: the training form runs hundreds of narrow kernels per image (BatchNorm, activations, sums and
concatenations around 20-40-channel convolutions), so on CPUs it achieves a fraction of the arithmetic
rate of a plain network such as DnCNN and is slower despite doing a third of its arithmetic. Here
BatchNorm is folded into the convolution before it, every activation is computed once per feature,
convolutions that read the same features with the same kernel become one wider convolution (stacked
outputs, or concatenated inputs where they feed the same sum). On the CPU each convolution runs on the
kernel and in the layout measured fastest for its kind (:class:`~hinas.fold.FusedConv`: Winograd for
dense 3x3 in NCHW, oneDNN for depthwise and dilated ones in channels_last, 1x1 on oneDNN or as matrix
products that change layout for free), a cell's nodes are summed as their convolutions write them (in
slices of the cell's output, or in a tensor of their own copied there once), and the decoder never
concatenates its two inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hinas.infer.kernels import FusedConv, PreAct, compose_pointwise, compose_separable, cpu_kernels, fold_sequential
from hinas.nas.layers import ASPP, Decoder
from hinas.nas.network import Cell, Network
from hinas.nas.ops import NEGATIVE_SLOPE, Zero

Separable = Literal["keep", "dense"]


@dataclass
class _Edge:
    node: int
    state: int
    body: nn.Module
    activated: bool
    """The body reads LeakyReLU(state), the pre-activation every parametric op starts with; else the raw state."""
    fresh: bool = True
    """The body returns a new tensor, which later sums may add to in place."""

    @property
    def conv(self) -> FusedConv | None:
        """The op's single convolution (no activation after it), when that is all it is: it can merge with others."""
        body = self.body
        if isinstance(body, nn.Sequential) and len(body) == 1:
            body = body[0]
        return body if isinstance(body, FusedConv) and body.act is None and body.groups == 1 and self.activated else None


def _compose_separable_pairs(convs: list[nn.Module]) -> list[nn.Module]:
    """Replace each depthwise convolution that feeds a 1x1 convolution directly by the equal dense convolution."""
    out: list[nn.Module] = []
    for m in convs:
        prev = out[-1] if out else None
        if (isinstance(m, FusedConv) and isinstance(prev, FusedConv) and prev.act is None and m.groups == 1
                and m.weight.shape[-1] == 1 and prev.groups == prev.weight.shape[0] == m.weight.shape[1]
                and prev.weight.shape[1] == 1):
            dense = compose_separable((prev.weight.double(), prev.bias.double()), (m.weight.double(), m.bias.double()))
            out[-1] = FusedConv(dense, dilation=prev.dilation, act=m.act)
        else:
            out.append(m)
    return out


def _edge(node: int, state: int, op: nn.Module, separable: Separable) -> _Edge | None:
    """How the inference form computes one edge; None for the zero op."""
    if isinstance(op, Zero):
        return None
    if isinstance(op, nn.Identity):
        return _Edge(node, state, nn.Identity(), activated=False, fresh=False)
    try:
        folded = list(fold_sequential(op)) if isinstance(op, nn.Sequential) else []
    except ValueError:
        folded = []
    if len(folded) < 2 or not isinstance(folded[0], PreAct) or folded[0].slope != NEGATIVE_SLOPE:
        # An operation registered by a user that this module does not recognise: run it as trained.
        return _Edge(node, state, copy.deepcopy(op).eval(), activated=False, fresh=False)
    body = folded[1:]
    if separable == "dense":
        body = _compose_separable_pairs(body)
    return _Edge(node, state, nn.Sequential(*body), activated=True)


class _Step(nn.Module):
    """One convolution (or op) of a cell: reads states, activated or raw, and adds its output slices to nodes."""

    def __init__(self, inputs: tuple[int, ...], activated: bool, targets: tuple[int, ...], body: nn.Module,
                 fresh: bool = True) -> None:
        super().__init__()
        self.inputs, self.activated, self.targets, self.body, self.fresh = inputs, activated, targets, body, fresh
        self.register_buffer("tail_bias", None)
        """Set where the body ends in a 1x1 convolution that writes its node in place (see FastCell); then that
        node's share of the summed biases of all such convolutions, or None for the ones that add after the first."""

    @property
    def tail(self) -> FusedConv | None:
        """The 1x1 convolution (no activation) that ends a one-node op, e.g. a separable one."""
        last = self.body[-1] if isinstance(self.body, nn.Sequential) and len(self.body) > 1 else None
        return last if isinstance(last, FusedConv) and last.is_pointwise and last.act is None and len(self.targets) == 1 else None


class FastCell(nn.Module):
    """A cell computed source by source: the ops that are one convolution and leave the same states with the
    same kernel become one convolution (stacked outputs; inputs concatenated where every output reads every input).

    ``separable="dense"`` computes each depthwise + 1x1 pair of the separable ops
    as one dense convolution (exact, but about 6x the arithmetic at 20 channels);
    ``"keep"`` runs them as trained.
    """

    def __init__(self, cell: Cell, channels: int, separable: Separable = "keep") -> None:
        super().__init__()
        self.channels, self.nodes = channels, len(cell.nodes)
        edges = [e for i, (ops, inputs) in enumerate(zip(cell.nodes, cell.inputs)) for op, j in zip(ops, inputs)
                 if (e := _edge(i, j, op, separable)) is not None]
        steps: list[_Step] = []
        for stage in [(0, 1)] + [(2 + i,) for i in range(self.nodes - 1)]:
            mine = [e for e in edges if e.state in stage]
            groups: dict[tuple[int, int], list[_Edge]] = {}
            for e in mine:
                if e.conv is not None:
                    groups.setdefault((e.conv.weight.shape[-1], e.conv.dilation), []).append(e)
            for members in groups.values():
                steps += self._summed(members)
            steps += [_Step((e.state,), e.activated, (e.node,), e.body, e.fresh) for e in mine if e.conv is None]
        self.steps = nn.ModuleList(steps)
        self.raw_inputs = {j for s in steps if not s.activated for j in s.inputs}
        first: dict[int, int] = {}
        for k, s in enumerate(steps):
            for t in s.targets:
                first.setdefault(t, k)
        self.direct = (bool(first) and steps[0].tail is None and all(k == 0 for k in first.values()) and steps[0].fresh
                       and steps[0].targets == tuple(range(self.nodes)))
        """The first step writes every node, in order: its output is the cell's output buffer."""
        biased: set[int] = set()
        for s in steps:
            if s.tail is not None and s.targets[0] not in biased:
                t = s.targets[0]
                biased.add(t)
                s.tail_bias = sum(r.tail.bias for r in steps if r.tail is not None and r.targets == (t,))

    @property
    def input_layout(self) -> torch.memory_format:
        """Where every convolution reading the cell's inputs is a Winograd one (NCHW on the CPU), the inputs are NCHW."""
        steps = [s for s in self.steps if {0, 1} & set(s.inputs)]
        return torch.contiguous_format if steps and all(_reads_nchw(s.body) for s in steps) else torch.channels_last

    def _summed(self, members: list[_Edge]) -> list[_Step]:
        """One convolution over every source read by every target, else one per source, outputs stacked by node."""
        sources = sorted({e.state for e in members})
        targets = sorted({e.node for e in members})
        full = all(any(e.state == j and e.node == t for e in members) for j in sources for t in targets)
        steps = []
        for group in [sources] if full else [[j] for j in sources]:
            mine = [e for e in members if e.state in group]
            outs = sorted({e.node for e in mine})
            ref = mine[0].conv
            c, ci = self.channels, ref.weight.shape[1]
            weight = ref.weight.new_zeros(len(outs) * c, len(group) * ci, *ref.weight.shape[2:], dtype=torch.float64)
            bias = weight.new_zeros(len(outs) * c)
            for e in mine:
                o, i = outs.index(e.node) * c, group.index(e.state) * ci
                weight[o : o + c, i : i + ci] += e.conv.weight.double()
                bias[o : o + c] += e.conv.bias.double()
            steps.append(_Step(tuple(group), True, tuple(outs), FusedConv((weight, bias), dilation=ref.dilation)))
        return steps

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """On the CPU, nodes are summed in place, in channel slices of the output or in a tensor of their own copied
        there once: no temporary sums, no concatenation.

        Elsewhere (GPU, ONNX tracing, torch.compile) nodes are summed and concatenated out of place.
        """
        in_place = cpu_kernels(s0)
        states: list[torch.Tensor | None] = [s1, s0] + [None] * self.nodes
        acts: dict[int, torch.Tensor] = {}
        c = self.channels
        out: torch.Tensor | None = None
        if in_place and not self.direct:
            layout = torch.channels_last if s0.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((s0.shape[0], self.nodes * c, *s0.shape[2:]), dtype=s0.dtype, device=s0.device,
                              memory_format=layout)
        nodes: list[torch.Tensor | None] = [None] * self.nodes
        """Out of place: each node's sum so far; in place: its slice of ``out``, once written, or a tensor of its own."""
        own: dict[int, torch.Tensor] = {}
        """In place, the nodes that start with a 1x1 convolution on oneDNN: a tensor of their own that the node's
        later 1x1 convolutions add to as they write, copied into ``out`` once complete (cheaper than adding to a slice)."""

        def slot(t: int) -> torch.Tensor:
            """Node ``t``'s channels of ``out``."""
            return out[:, t * c : (t + 1) * c]

        def state(j: int) -> torch.Tensor:
            if states[j] is None:
                node = nodes[j - 2]
                if node is None:  # a node of zero ops only
                    node = slot(j - 2).zero_() if in_place else torch.zeros_like(s0)
                states[j] = node
            return states[j]

        def activated(j: int) -> torch.Tensor:
            if j not in acts:
                x = state(j)
                acts[j] = F.leaky_relu_(x, NEGATIVE_SLOPE) if j < 2 and j not in self.raw_inputs \
                    else F.leaky_relu(x, NEGATIVE_SLOPE)
            return acts[j]

        for step in self.steps:
            xs = [activated(j) if step.activated else state(j) for j in step.inputs]
            x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
            if out is not None and step.tail is not None:
                t, h = step.targets[0], step.body[:-1](x)
                if nodes[t] is not None:
                    step.tail.into(h, nodes[t], step.tail_bias, accumulate=True)
                elif step.tail.writes_fused(h):  # a node of its own, later ops add to it as they write
                    nodes[t] = own[t] = step.tail.with_bias(h, step.tail_bias)
                else:
                    nodes[t] = slot(t)
                    step.tail.into(h, nodes[t], step.tail_bias, accumulate=False)
                continue
            y = step.body(x)
            if in_place and out is None:  # the direct step
                out = y
            parts = [y] if len(step.targets) == 1 else y.split(c, dim=1)
            for t, part in zip(step.targets, parts):
                if not in_place:
                    nodes[t] = part if nodes[t] is None else nodes[t] + part
                elif nodes[t] is None:
                    nodes[t] = slot(t)
                    if part.data_ptr() != nodes[t].data_ptr():
                        nodes[t].copy_(part)
                else:
                    nodes[t].add_(part)
        if in_place:
            for i in range(self.nodes):
                state(2 + i)
            for i, node in own.items():
                slot(i).copy_(node)
            return out
        if self.direct and len(self.steps) == 1:
            return y
        return torch.cat([state(2 + i) for i in range(self.nodes)], dim=1)


def _reads_nchw(body: nn.Module) -> bool:
    """The op starts with a convolution that runs fastest on NCHW inputs on the CPU (a Winograd one)."""
    first = body[0] if isinstance(body, nn.Sequential) and len(body) else body
    return isinstance(first, FusedConv) and first.winograd


class FastNetwork(nn.Module):
    """Inference form of a :class:`~hinas.network.Network`: equal outputs, BatchNorm folded, activations computed once.

    Beyond the cells: the stem's two activations in a row are one LeakyReLU with
    the squared slope (its raw output is never read); when the decoder's endpoint
    is ``reduce``, the 3x3 ``reduce`` and the 1x1 projection after it (no
    activation between) are one 3x3 convolution to 48 channels. Build it from a
    trained network; it copies the folded weights as buffers, in ``dtype``: the
    features are computed in it (bf16 halves memory traffic and runs oneDNN's bf16
    kernels), the input and output keep their own.
    """

    def __init__(self, net: Network, separable: Separable = "keep", channels_last: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        space = net.genotype.space
        self.task, self.scale, self.channels_last = space.task, space.scale, channels_last
        stem1 = fold_sequential(net.stem.stem1)[0]
        self.stem1 = FusedConv((stem1.weight.double(), stem1.bias.double()), act=NEGATIVE_SLOPE**2)
        self.stem2 = fold_sequential(net.stem.stem2)[1]
        self.endpoint_layer = net.endpoint_layer
        proj = fold_sequential(net.decoder.proj)[0]
        if net.endpoint_layer is None:
            reduce = fold_sequential(net.reduce)[0]
            self.proj = FusedConv(compose_pointwise(reduce, proj), act=proj.act)
        else:
            self.proj = proj
        self.scale0 = nn.ModuleList(fold_sequential(layer.scale0)[1] for layer in net.layers)
        self.scale1 = nn.ModuleList(fold_sequential(layer.scale1)[1] for layer in net.layers)
        self.cells = nn.ModuleList(FastCell(layer.cell, layer.scale0[1].out_channels, separable) for layer in net.layers)
        self.decoder = FastDecoder(net.decoder)
        if dtype != torch.float32:  # weights folded in float64, rounded once to float32, then to ``dtype``
            # channels_last weights too: oneDNN writes channels_last where the input or the weight is, and a one-channel
            # input (the image) is both layouts at once
            self.to(dtype, memory_format=torch.channels_last)
        for cell, scalers in zip(self.cells, zip(self.scale0, self.scale1)):
            for scaler in scalers:
                scaler.memory_format = cell.input_layout

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """What the network adds to its input (denoising: minus the noise; SR: to the bicubic upscale, before pixel shuffle)."""
        # Every feature is read through an activation except by the endpoint projection, which runs first:
        # so activations are computed in place, and the stem's two in a row are one (slope squared).
        a1 = self.stem1(x)
        h0 = self.stem2(a1)
        endpoint = self.proj(h0) if self.endpoint_layer is None else None
        a0 = F.leaky_relu_(h0, NEGATIVE_SLOPE)
        for i, cell in enumerate(self.cells):
            h = cell(self.scale0[i](a0), self.scale1[i](a1))
            if i == self.endpoint_layer:
                endpoint = self.proj(h)
            a1, a0 = a0, F.leaky_relu_(h, NEGATIVE_SLOPE)
        return self.decoder(a0, endpoint)

    @property
    def dtype(self) -> torch.dtype:
        """What the residual is computed in, from the image rounded to it; the residual step and the SR upscale
        take the image as given (float32). Computing the first convolution in float32 instead (on the unrounded
        image) changed PSNR by under 0.01 dB in tests/test_precision.py and cost 10-15% of the time: writing its
        64 float32 channels and converting them to bf16 channels_last."""
        return self.stem1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.dtype)
        if self.channels_last and not cpu_kernels(h):
            h = h.contiguous(memory_format=torch.channels_last)
        return reconstruct(x, self.residual(h).to(x.dtype), self.task, self.scale)


def reconstruct(image: torch.Tensor, residual: torch.Tensor, task: str, scale: int) -> torch.Tensor:
    """The residual learning of HiNAS: denoising subtracts the predicted noise, SR adds to the MATLAB-bicubic upscale."""
    if task == "sr":
        from hinas.nas.resize import imresize

        return imresize(image, scale) + F.pixel_shuffle(residual, scale)
    return image - residual


class FastDecoder(nn.Module):
    """The decoder with BatchNorm folded; the endpoint projection is done by the caller (it may fold into ``reduce``).

    Its first separable block reads the concatenation [projected endpoint, pre-processed feature]: its
    depthwise convolution is run on each part and its 1x1 convolution sums the two parts' products
    (the second adding to the first as it writes), so the concatenation is never built.
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        if len(decoder.pre) != 1:
            raise ValueError("the inference form is for derived networks (one decoder input)")
        pre = decoder.pre[0]
        self.pre = FastASPP(pre) if isinstance(pre, ASPP) else fold_sequential(pre)
        depthwise, mix = fold_sequential(decoder.fuse[0])
        e = decoder.proj[0].out_channels
        self.depthwise = nn.ModuleList(FusedConv((w, b), groups=w.shape[0], act=depthwise.act) for w, b in
                                       zip(depthwise.weight.double().split((e, depthwise.out_channels - e)),
                                           depthwise.bias.double().split((e, depthwise.out_channels - e))))
        projected, rest = mix.weight.double().split((e, mix.weight.shape[1] - e), dim=1)
        self.mix = nn.ModuleList([FusedConv((projected, mix.bias.double() * 0)), FusedConv((rest, mix.bias.double()))])
        self.mix_act = mix.act
        self.fuse = nn.Sequential(*(c for block in decoder.fuse[1:] for c in fold_sequential(block)))
        self.head = fold_sequential(nn.Sequential(decoder.head))[0]

    def forward(self, x1: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """``x1``: the activated last feature; ``projected``: the endpoint after the 48-channel projection."""
        y = self.mix[1](self.depthwise[1](self.pre(x1)))
        return self.head(self.fuse(self.mix[0].plus(self.depthwise[0](projected), y, self.mix_act)))


class FastASPP(nn.Module):
    def __init__(self, aspp: ASPP) -> None:
        super().__init__()
        self.branches = nn.ModuleList(fold_sequential(b) for b in aspp.branches)
        self.fuse = fold_sequential(aspp.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))

"""Folding trained layers into plain convolutions for inference.

In eval mode a BatchNorm is an affine map per channel, so ``BN(conv(x))`` is one
convolution with scaled weights and a bias; a depthwise convolution followed by a
pointwise one is one dense convolution with ``W[o, i] = P[o, i] * D[i]``. Folding is
done in float64 and rounded once, so the folded layers agree with the trained ones
to float32 rounding.

The fastest CPU kernels here are private PyTorch ops (NNPACK's Winograd convolution, oneDNN's convolution
with fused activation or sum). They are used only where :func:`probe_private_ops` found them, once per
process, giving the public ``conv2d``'s results under a torch version they were checked with; else the
public op runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Affine = tuple[torch.Tensor, torch.Tensor]
"""(weight, bias) of a convolution, in float64 while being folded."""


def conv_affine(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> Affine:
    """Weight and bias of ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    if bn is None:
        return w, b
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    shift = -bn.running_mean.double() * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight.detach().double(), shift * bn.weight.detach().double() + bn.bias.detach().double()
    return w * scale[:, None, None, None], b * scale + shift


def compose_separable(depthwise: Affine, pointwise: Affine) -> Affine:
    """The dense convolution equal to a depthwise convolution followed by a 1x1 one."""
    (dw, db), (pw, pb) = depthwise, pointwise
    p = pw[:, :, 0, 0]
    return p[:, :, None, None] * dw[:, 0][None], pb + p @ db


def compose_pointwise(first: FusedConv, pointwise: FusedConv) -> Affine:
    """The convolution equal to ``first`` (no activation) followed by a 1x1 convolution."""
    if first.act is not None or first.groups != 1 or pointwise.weight.shape[-1] != 1 or pointwise.groups != 1:
        raise ValueError("compose_pointwise needs a plain convolution followed by a 1x1 convolution")
    p = pointwise.weight.double()[:, :, 0, 0]
    w = torch.einsum("oc,cikl->oikl", p, first.weight.double())
    return w, pointwise.bias.double() + p @ first.bias.double()


class FusedConv(nn.Module):
    """A convolution with its BatchNorm folded in, optionally followed by LeakyReLU computed in place.

    Weights are buffers, not parameters: the inference form holds no autograd state.
    ``act`` is the negative slope of the activation after the convolution (0 is ReLU, None is none).

    On the CPU (eager float32) each kind runs on the kernel measured fastest for it here: a 1x1
    convolution runs on oneDNN where its input already has the layout it writes (``memory_format``)
    and is otherwise a matrix product that reads one layout and writes the other, so layouts change
    for free where the next layer wants the other one; a dense undilated 3x3 convolution on an NCHW
    input runs on NNPACK's Winograd kernels (about 2x oneDNN's speed at 20-128 channels, rounding
    within 2e-5 of the direct sum); the rest (depthwise, dilated) runs on oneDNN in channels_last,
    2-3x its NCHW speed. oneDNN applies the activation as it writes. In bf16 (weights converted by
    ``.to(torch.bfloat16, memory_format=torch.channels_last)``) every kind runs on oneDNN in channels_last
    (the narrow head too, as shifted taps): NNPACK
    has no bf16, and oneDNN's bf16 kernels run 1.5-2.6x its float32 ones here (AVX-512 bf16, 20-128
    channels). Elsewhere (GPU, tracing for ONNX, torch.compile) it is a plain ``conv2d``.
    """

    def __init__(self, affine: Affine, *, dilation: int = 1, groups: int = 1, act: float | None = None) -> None:
        super().__init__()
        weight, bias = affine
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.dilation, self.groups, self.act = dilation, groups, act
        self.padding = dilation * (weight.shape[-1] - 1) // 2
        self.memory_format = torch.channels_last
        """The layout a 1x1 convolution writes on the CPU."""

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def is_pointwise(self) -> bool:
        return self.weight.shape[-1] == 1 and self.groups == 1

    @property
    def dense3x3(self) -> bool:
        return self.weight.shape[-1] == 3 and self.groups == 1 and self.dilation == 1

    @property
    def winograd(self) -> bool:
        """Runs on NNPACK on the CPU: a dense undilated 3x3 convolution (NNPACK has no dilation or groups) on
        8 channels or more (on fewer, as the stem's on the image, it is slower than oneDNN)."""
        return self.dense3x3 and self.weight.shape[1] >= 8 and PRIVATE.nnpack and self.weight.dtype == torch.float32

    @property
    def narrow(self) -> bool:
        """Few outputs for its inputs (the head: 1 from 128): oneDNN runs it at a fifth of its usual rate."""
        o, c, k, _ = self.weight.shape
        return self.groups == 1 and k > 1 and 2 * o * k * k <= c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cpu_kernels(x):
            y = F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation, groups=self.groups)
        elif self.is_pointwise and PRIVATE.onednn_for(x) and (_pixels_by_channels(x) if self.memory_format == torch.channels_last
                                                 else x.is_contiguous()):
            # oneDNN's 1x1 kernel adds the bias and the activation as it writes (a matrix product: two more passes),
            # and in NCHW it beats MKL's product at these widths (80->40 channels: 21 ms against 53 ms)
            return self._run_onednn(x, self.bias, self.act)
        elif self.is_pointwise:
            y = pointwise(x, self.weight[:, :, 0, 0], self.bias, self.memory_format)
        elif self.narrow:
            y = shifted_taps(x, self.weight, self.bias, self.dilation, self.padding)
        elif self.winograd and x.is_contiguous():
            y = torch._nnpack_spatial_convolution(x, self.weight.contiguous(), self.bias, [self.padding] * 2)
        elif self.dense3x3 and x.is_contiguous() and x.dtype == torch.float32:
            y = F.conv2d(x, self.weight.contiguous(), self.bias, padding=self.padding)  # NCHW, for a Winograd one next
        elif PRIVATE.onednn_for(x):
            return self._run_onednn(x.contiguous(memory_format=torch.channels_last), self.bias, self.act)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation, groups=self.groups)
        return y if self.act is None else F.leaky_relu_(y, self.act)

    def _run_onednn(self, x: torch.Tensor, bias: torch.Tensor | None, act: float | None) -> torch.Tensor:
        """oneDNN on a channels_last input, the activation applied as the output is written where this build can."""
        pad, dil = [self.padding] * 2, [self.dilation] * 2
        if PRIVATE.post_ops_for(x):
            attr, scalars = ("none", []) if act is None else ("leaky_relu", [act])
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, bias, pad, [1, 1], dil, self.groups, attr, scalars,
                                                           None)
        y = torch.ops.aten.mkldnn_convolution(x, self.weight, bias, pad, [1, 1], dil, self.groups)
        return y if act is None else F.leaky_relu_(y, act)

    def plus(self, x: torch.Tensor, other: torch.Tensor, act: float | None) -> torch.Tensor:
        """LeakyReLU(this convolution of ``x`` + ``other``) with slope ``act`` (None: no activation), written into
        ``other``. On the CPU oneDNN adds as it writes: one pass over the output fewer."""
        if cpu_kernels(x) and PRIVATE.post_ops_for(x) and _pixels_by_channels(x) and _pixels_by_channels(other):
            # written into ``other`` (no second feature alive); the sum's only activation post-op is ReLU
            y = self._add_onednn(x, other, self.bias, relu=act == 0)
            return y if act is None or act == 0 else F.leaky_relu_(y, act)
        y = other.add_(F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation, groups=self.groups))
        return y if act is None else F.leaky_relu_(y, act)

    def _add_onednn(self, x: torch.Tensor, other: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
        """``other`` += this convolution of ``x`` (with ``bias``), then ReLU if asked, as oneDNN writes; returns ``other``."""
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            other, x, self.weight, bias, [self.padding] * 2, [1, 1], [self.dilation] * 2, self.groups,
            "add", 1.0, "relu" if relu else None, [], None)

    def writes_fused(self, x: torch.Tensor) -> bool:
        """This 1x1 convolution of ``x`` runs on oneDNN, which can add to an existing tensor as it writes."""
        return self.is_pointwise and cpu_kernels(x) and PRIVATE.post_ops_for(x) and _pixels_by_channels(x)

    def with_bias(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """This convolution of ``x`` with ``bias`` instead of its own, on oneDNN (where :meth:`writes_fused`)."""
        return self._run_onednn(x, bias, self.act)

    def into(self, x: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None, accumulate: bool) -> None:
        """Write (or add) this 1x1 convolution, no activation, with ``bias`` instead of its own, to ``out`` in place.

        From a channels_last input oneDNN's product and a copy beat a matrix product writing to ``out``
        directly (2.0 ms against 4.6 ms for 10 channels at 512x512: MKL is slow with so few columns); where
        ``out`` is a whole channels_last tensor, oneDNN adds to it as it writes (1.3 ms)."""
        if accumulate and self.writes_fused(x) and out.is_contiguous(memory_format=torch.channels_last):
            self._add_onednn(x, out, bias)
        elif cpu_kernels(x) and cpu_kernels(out) and PRIVATE.onednn_for(x) and _pixels_by_channels(x):
            y = self._run_onednn(x, bias, None)
            out.add_(y) if accumulate else out.copy_(y)
        elif cpu_kernels(x) and cpu_kernels(out):
            pointwise(x, self.weight[:, :, 0, 0], bias, out=out, accumulate=accumulate)
        else:
            y = F.conv2d(x, self.weight, bias)
            out.add_(y) if accumulate else out.copy_(y)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i * self.groups}->{o}, k={k}, dilation={self.dilation}, groups={self.groups}, act={self.act}"


TESTED_TORCH = ((2, 13), (2, 15))
"""torch versions (from, up to but excluding) the private ops were checked with; CI installs 2.13.0.
Private ops can change signature or meaning in any release, so outside this range only public ops run."""


@dataclass(frozen=True)
class PrivateOps:
    """Which private convolutions this process may call; each False runs the public ``conv2d`` instead."""

    nnpack: bool = False
    """``torch._nnpack_spatial_convolution``: Winograd 3x3, float32 only."""
    onednn: bool = False
    """``aten.mkldnn_convolution``: oneDNN on channels_last inputs (any groups, dilation), float32 or bf16."""
    post_ops: bool = False
    """``mkldnn._convolution_pointwise`` and its in-place sum: oneDNN with the activation or sum applied as it writes
    (the ops torch.compile's CPU back-end emits)."""
    bf16: bool = False
    """The oneDNN ops agreed in bf16 too; where not (oneDNN refuses bf16 on a CPU without AVX-512 or AVX-NE-CONVERT),
    bf16 inputs take the public paths and float32 ones keep the fast ones."""

    def onednn_for(self, x: torch.Tensor) -> bool:
        return self.onednn and (x.dtype != torch.bfloat16 or self.bf16)

    def post_ops_for(self, x: torch.Tensor) -> bool:
        return self.post_ops and (x.dtype != torch.bfloat16 or self.bf16)


def probe_private_ops(version: str = torch.__version__) -> PrivateOps:
    """Each private op this module uses, tried once on tiny tensors against ``F.conv2d`` (float32, and the oneDNN ones
    in bf16 too; dense and depthwise-dilated) under a torch version in :data:`TESTED_TORCH`; an op that is missing,
    fails or disagrees is left off."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or not TESTED_TORCH[0] <= (int(m[1]), int(m[2])) < TESTED_TORCH[1]:
        return PrivateOps()
    onednn, post_ops = _onednn_agrees(torch.float32)
    nnpack = torch._nnpack_available() and _agrees(  # _nnpack_available also initialises NNPACK, which the op needs
        lambda x, w, b, pad, dil, groups: F.leaky_relu(torch._nnpack_spatial_convolution(x.contiguous(), w, b, pad), 0.2),
        dtypes=(torch.float32,), depthwise=False)
    return PrivateOps(nnpack=nnpack, onednn=onednn, post_ops=post_ops,
                      bf16=onednn and _onednn_agrees(torch.bfloat16) == (onednn, post_ops))


def _onednn_agrees(dtype: torch.dtype) -> tuple[bool, bool]:
    """Whether oneDNN's convolution, and its forms with an activation or sum applied as it writes, agree in ``dtype``."""
    onednn = torch.backends.mkldnn.is_available() and _agrees(
        lambda x, w, b, pad, dil, groups: F.leaky_relu(torch.ops.aten.mkldnn_convolution(x, w, b, pad, [1, 1], dil, groups), 0.2),
        (dtype,))
    post_ops = onednn and _agrees(
        lambda x, w, b, pad, dil, groups: torch.ops.mkldnn._convolution_pointwise(
            x, w, b, pad, [1, 1], dil, groups, "leaky_relu", [0.2], None), (dtype,)) and _sum_agrees(dtype)
    return onednn, post_ops


def _agrees(op, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16), depthwise: bool = True) -> bool:
    """``op(x, weight, bias, padding, dilation, groups)`` is LeakyReLU(0.2) of the convolution on a channels_last
    input, to the dtype's rounding."""
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for groups, dilation in ((1, 1), (8, 2)) if depthwise else ((1, 1),):
            x = torch.randn(2, 8, 7, 6, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
            w, b = (torch.randn(8, 8 // groups, 3, 3, generator=g) / 4).to(dtype), torch.randn(8, generator=g).to(dtype)
            expected = F.leaky_relu(F.conv2d(x.float(), w.float(), b.float(), padding=dilation, dilation=dilation,
                                             groups=groups), 0.2)
            try:
                y = op(x, w, b, [dilation] * 2, [dilation] * 2, groups)
            except (RuntimeError, AttributeError, TypeError, NotImplementedError):
                return False
            if y.shape != expected.shape or y.dtype != dtype or not torch.allclose(y.float(), expected, **_close(dtype)):
                return False
    return True


def _sum_agrees(dtype: torch.dtype) -> bool:
    """oneDNN's in-place sum: ``other`` += the convolution, then ReLU, written into ``other`` and returned."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 7, 6, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = (torch.randn(5, 8, 1, 1, generator=g) / 4).to(dtype), torch.randn(5, generator=g).to(dtype)
    other = torch.randn(2, 5, 7, 6, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    expected = F.relu(other.float() + F.conv2d(x.float(), w.float(), b.float()))
    try:
        y = torch.ops.mkldnn._convolution_pointwise_.binary(other, x, w, b, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, "relu",
                                                            [], None)
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False
    return y.data_ptr() == other.data_ptr() and torch.allclose(other.float(), expected, **_close(dtype))


def _close(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}


PRIVATE = probe_private_ops()
"""The private ops this process uses (read at each call, so a test can swap it for :class:`PrivateOps` ())."""


def _pixels_by_channels(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


def cpu_kernels(x: torch.Tensor) -> bool:
    """Eager float32 or bf16 on the CPU: not traced for ONNX, not compiled (their graphs want plain convolutions)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              memory_format: torch.memory_format = torch.channels_last, out: torch.Tensor | None = None,
              accumulate: bool = False) -> torch.Tensor:
    """A 1x1 convolution as one matrix product per image, reading NCHW or channels_last.

    Writes a new tensor in ``memory_format``, or writes (adds, with ``accumulate``) to
    ``out``: any layout whose channel or pixel stride is 1, e.g. a channel slice of a
    bigger feature, which then needs no concatenation and no separate sum.
    """
    n, _, h, w = x.shape
    y = torch.empty((n, weight.shape[0], h, w), dtype=x.dtype, memory_format=memory_format) if out is None else out
    for xi, yi in zip(x, y):
        a, a_by_pixel = _matrix(xi)
        result, by_pixel = _matrix(yi, writable=True)
        if by_pixel and not a_by_pixel and weight.shape[0] < _MKL_NARROW:
            _narrow_transposed(a.t(), weight, bias, result, accumulate)
            continue
        if by_pixel:  # result[pixel, out channel]
            left, right, b = (a if a_by_pixel else a.t()), weight.t(), bias
        else:  # result[out channel, pixel]
            left, right, b = weight, (a.t() if a_by_pixel else a), None if bias is None else bias[:, None]
        if accumulate:
            result.addmm_(left, right)
            if b is not None:
                result.add_(b)
        elif b is not None:
            torch.addmm(b, left, right, out=result)
        else:
            torch.mm(left, right, out=result)
    return y


_MKL_NARROW = 16
"""MKL's product of a transposed (channel-major) image matrix with fewer than about 12 output columns runs
5-10x slower than with 16 (64->10 channels at 512x512: 92 ms against 9 ms), so those get padded to 16."""


def _narrow_transposed(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, result: torch.Tensor,
                       accumulate: bool) -> None:
    """``result[pixel, o] (+)= a[pixel, :] @ weight[o].T + bias[o]`` for a channel-major ``a`` and few outputs:
    computed with the weight padded to :data:`_MKL_NARROW` rows, then the real columns copied (or added)."""
    o = weight.shape[0]
    padded = weight.new_zeros(_MKL_NARROW, weight.shape[1] + 1)
    padded[:o, :-1] = weight
    if bias is not None:
        padded[:o, -1] = bias
    full = torch.addmm(padded[:, -1], a, padded[:, :-1].t())
    result.add_(full[:, :o]) if accumulate else result.copy_(full[:, :o])


def shifted_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int, padding: int) -> torch.Tensor:
    """A convolution with few outputs: one 1x1 product to a plane per (tap, output), then the planes added, shifted.

    The planes are summed in float32 and rounded to the input's dtype once: in bf16, rounding each partial sum
    would add nine roundings of sums that can be far larger than the result.
    """
    o, c, k, _ = weight.shape
    n, _, h, w = x.shape
    taps = weight.permute(2, 3, 0, 1).reshape(k * k * o, c)
    # oneDNN's 1x1 and a copy: 14 ms, a matrix product to NCHW 20 ms (128->9)
    if PRIVATE.onednn_for(x) and _pixels_by_channels(x):
        planes = torch.ops.aten.mkldnn_convolution(x, taps[:, :, None, None].contiguous(), None, [0, 0], [1, 1], [1, 1],
                                                   1).contiguous()
    else:
        planes = pointwise(x, taps, None, torch.contiguous_format)
    y = bias.float().view(1, o, 1, 1).expand(n, o, h, w).contiguous()
    for i in range(k):
        for j in range(k):
            dy, dx = i * dilation - padding, j * dilation - padding
            if abs(dy) < h and abs(dx) < w:
                tap = planes[:, (i * k + j) * o : (i * k + j + 1) * o]
                y[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] += \
                    tap[..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
    return y.to(x.dtype)


def _matrix(feature: torch.Tensor, writable: bool = False) -> tuple[torch.Tensor, bool]:
    """One image's feature (C, H, W) as pixels x channels (True) or channels x pixels, as laid out.

    ``writable``: a view (an error where none exists), so that what is written to it lands in ``feature``.
    """
    c, h, w = feature.shape
    if feature.stride(0) == 1 and c > 1:
        hwc = feature.permute(1, 2, 0)
        return (hwc.view(h * w, c) if writable else hwc.reshape(h * w, c)), True
    return (feature.view(c, h * w) if writable else feature.reshape(c, h * w)), False


def activation_slope(module: nn.Module) -> float | None:
    """Negative slope of a (Leaky)ReLU module, None for anything else."""
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return 0.0
    return None


class PreAct(nn.Module):
    """A LeakyReLU that starts a pre-activation block; out of place, since its input is usually used again."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


def fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Fold every ``conv [BN] [act]`` run of a Sequential into one :class:`FusedConv`.

    Activations not preceded by a convolution stay (as :class:`PreAct`). A
    depthwise convolution directly followed by a 1x1 convolution is kept as two
    convolutions: composing them would multiply the arithmetic (see
    :func:`compose_separable` for where that pays).
    """
    mods = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d) else None
            j = i + 1 + (bn is not None)
            slope = activation_slope(mods[j]) if j < len(mods) else None
            j += slope is not None
            if m.stride != (1, 1) or m.padding_mode != "zeros" or m.padding != (m.dilation[0] * (m.kernel_size[0] - 1) // 2,) * 2:
                raise ValueError(f"cannot fold {m}: only stride-1 'same' convolutions are supported")
            out.append(FusedConv(conv_affine(m, bn), dilation=m.dilation[0], groups=m.groups, act=slope))
            i = j
        elif activation_slope(m) is not None:
            out.append(PreAct(activation_slope(m)))
            i += 1
        elif isinstance(m, nn.Identity):
            i += 1
        else:
            raise ValueError(f"cannot fold {type(m).__name__} in a Sequential")
    return nn.Sequential(*out)


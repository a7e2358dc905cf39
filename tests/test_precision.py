"""The inference form in bf16 against float32, the precision choice, and the guard around private PyTorch ops."""

import math
import re
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import uniform_genotype
from test_inference import degraded, photo, trained_like
from torch import nn

from hinas.data.degrade import seeded_noisy, sr_pair
from hinas.errors import ConfigError
from hinas.hardware import cpu_has_bf16
from hinas.infer import kernels
from hinas.infer.backends import InferenceModel, faster
from hinas.infer.fast import FastNetwork
from hinas.nas.network import Network
from hinas.nas.resize import imresize
from hinas.nas.space import preset

DENOISE, SR = preset("paper-denoise"), preset("paper-sr")
PSNR_TOLERANCE_DB = 0.02
"""bf16 inference may cost at most this much PSNR against float32, on 8-bit outputs (issue 14's accuracy target)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """On 8-bit images: both clamped to [0, 1] and rounded to 1/255, as restored images are saved."""
    a, b = (t.clamp(0, 1).mul(255).round() for t in (a, b))
    return 10 * math.log10(255**2 / (a - b).pow(2).mean().item())


def denoiser_like(net: Network, noisy: torch.Tensor, clean: torch.Tensor) -> Network:
    """Fit the head (the last convolution, linear) to the noise by ridge regression: a partly trained denoiser whose
    residual is as large as the noise, where a random network's tiny residual would hide bf16's rounding.

    The ridge keeps the head's weights below 1, as training's weight decay does: fitted without one (weights of 20,
    cancelling), the head amplifies bf16's rounding of the random features and costs up to 0.1 dB.
    """
    head = net.decoder.head
    features = []
    handle = head.register_forward_hook(lambda module, args, out: features.append(args[0]))
    with torch.no_grad():
        net(noisy)
    handle.remove()
    patches = nn.functional.unfold(features[0], 3, padding=1)[0].T.double()  # pixels x (channels * 9)
    design = torch.cat([patches, torch.ones(len(patches), 1, dtype=torch.float64)], dim=1)
    gram = design.T @ design  # ridge regression: without it the fit cancels huge weights, which no training does
    ridge = 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    solution = torch.linalg.solve(gram + ridge, design.T @ (noisy - clean).flatten().double())
    with torch.no_grad():
        head.weight.copy_(solution[:-1].view_as(head.weight)), head.bias.fill_(solution[-1].item())
    return net


@pytest.mark.parametrize("op, path", [("sep_conv_3x3", (0, 0, 0)), ("conv_3x3", (0, 1, 2)), ("dil_conv_5x5", (1, 2, 2))])
def test_bf16_denoising_is_within_the_psnr_tolerance_of_float32(op, path):
    clean = photo(1, (160, 200))[None]
    noisy = seeded_noisy(clean[0], 25, "bf16")[None]
    net = denoiser_like(trained_like(Network(uniform_genotype(DENOISE, op, path), 8)), noisy, clean)
    f32, bf16 = FastNetwork(net)(noisy), FastNetwork(net, dtype=torch.bfloat16)(noisy)
    assert psnr(f32, clean) > psnr(noisy, clean) + 0.05  # it denoises, a little
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, f32)  # computed in bf16, returned in float32
    assert abs(psnr(bf16, clean) - psnr(f32, clean)) < PSNR_TOLERANCE_DB
    assert psnr(bf16, f32) > 45  # close pixel by pixel too, not only on average


def test_bf16_super_resolution_is_within_the_psnr_tolerance_of_float32():
    space = SR.replace(scale=2)
    net = trained_like(Network(uniform_genotype(space, "sep_conv_3x3", (1, 2)), 8))
    lr, hr = (t[None] for t in sr_pair(photo(3), 2))
    f32, bf16 = FastNetwork(net)(lr), FastNetwork(net, dtype=torch.bfloat16)(lr)
    assert bf16.dtype == torch.float32 and bf16.shape == f32.shape
    assert abs(psnr(bf16, hr) - psnr(f32, hr)) < PSNR_TOLERANCE_DB


@pytest.mark.parametrize("space", [DENOISE, SR.replace(scale=3)], ids=["denoise", "sr-x3"])
def test_bf16_keeps_the_residual_step_and_the_upscale_in_float32(space):
    """With a zero residual the output is the float32 input (or its float32 bicubic upscale) to the last bit: values
    bf16 cannot hold (1 + 2**-12) survive, so neither the input nor the upscale went through bf16."""
    net = trained_like(Network(uniform_genotype(space, "conv_3x3", (1, 2, 2)[: space.layers]), 8))
    nn.init.zeros_(net.decoder.head.weight), nn.init.zeros_(net.decoder.head.bias)
    x = degraded(space) + 2**-12
    assert torch.equal(FastNetwork(net, dtype=torch.bfloat16)(x), x if space.task == "denoise" else imresize(x, space.scale))


def test_cpu_bf16_detection_can_be_forced_off(monkeypatch):
    capabilities = torch.cpu.get_capabilities()
    monkeypatch.delenv("HINAS_NO_BF16", raising=False)
    assert cpu_has_bf16() == bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
    monkeypatch.setenv("HINAS_NO_BF16", "1")
    assert not cpu_has_bf16()


def test_without_bf16_auto_keeps_float32_and_bf16_is_refused(monkeypatch):
    monkeypatch.setenv("HINAS_NO_BF16", "1")
    net = trained_like(Network(uniform_genotype(DENOISE, "sep_conv_3x3", (0, 1, 1)), 4))
    model = InferenceModel(net, precision="auto")
    assert model.precision == "float32" and model.fast.dtype == torch.float32
    x = degraded(DENOISE)
    assert torch.equal(model(x), InferenceModel(net)(x))
    with pytest.raises(ConfigError, match="precision bf16 needs native bf16"):
        InferenceModel(net, precision="bf16")


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_auto_runs_the_precision_measured_faster(monkeypatch):
    net = trained_like(Network(uniform_genotype(DENOISE, "sep_conv_3x3", (0, 1, 1)), 4))
    timings = {torch.float32: 1.0, torch.bfloat16: 2.0}
    monkeypatch.setattr("hinas.infer.backends._timed", lambda model, x: timings[model.dtype])
    assert InferenceModel(net, precision="auto").precision == "float32"
    timings[torch.bfloat16] = 0.5
    model = InferenceModel(net, precision="auto")
    assert model.precision == "bf16" and model.fast.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="onnxruntime runs float32 only"):
        InferenceModel(net, "onnxruntime", precision="bf16")


def test_faster_takes_each_candidates_best_round():
    times = {"a": iter([9.0, 3.0, 3.0, 3.0]), "b": iter([9.0, 5.0, 2.5, 5.0])}  # warm-up, then three rounds
    assert faster({k: (lambda v=v: next(v)) for k, v in times.items()}) == "b"


PRIVATE_OPS = ("aten::_nnpack_spatial_convolution", "mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_")


def private_calls(fn) -> set[str]:
    """Private convolutions ``fn`` calls itself (aten::mkldnn_convolution also runs inside the public conv2d)."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.name.split(".")[0] for e in prof.events() if e.name.split(".")[0] in PRIVATE_OPS
            or (e.name == "aten::mkldnn_convolution" and (e.cpu_parent is None or e.cpu_parent.name != "aten::_convolution"))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("genotype", [uniform_genotype(DENOISE, "conv_3x3", (0, 1, 2)),
                                      uniform_genotype(SR.replace(scale=2), "sep_conv_5x5", (1, 2))], ids=["conv", "sep-sr"])
def test_public_ops_fallback_gives_the_same_outputs(monkeypatch, genotype, dtype):
    net = trained_like(Network(genotype, 8))
    x = degraded(genotype.space)
    fast = FastNetwork(net, dtype=dtype)
    with torch.no_grad():
        expected = net(x)
    private = fast(x)
    if kernels.PRIVATE.nnpack and kernels.PRIVATE.post_ops_for(torch.empty(0, dtype=dtype)):
        assert private_calls(lambda: fast(x))  # the test must see the fast path run to check the fallback against it
    monkeypatch.setattr(kernels, "PRIVATE", kernels.PrivateOps())
    public = fast(x)
    assert not private_calls(lambda: fast(x))
    tolerance = 1e-4 if dtype == torch.float32 else 3e-3
    assert (public - private).abs().max().item() < tolerance and (public - expected).abs().max().item() < 3 * tolerance


def test_private_ops_are_probed_once_against_conv2d_in_the_tested_torch_range():
    assert kernels.probe_private_ops("2.12.1") == kernels.PrivateOps() == kernels.probe_private_ops("2.15.0")
    lo, hi = kernels.TESTED_TORCH
    if lo <= tuple(int(v) for v in torch.__version__.split(".")[:2]) < hi and torch.backends.mkldnn.is_available():
        assert kernels.PRIVATE.onednn and kernels.PRIVATE.post_ops  # CI's torch: the fast paths are in use
        assert kernels.PRIVATE.bf16 or not cpu_has_bf16()  # oneDNN refuses bf16 only on CPUs without bf16 support

    def public(x, w, b, pad, dil, groups):
        return nn.functional.leaky_relu(nn.functional.conv2d(x, w, b, padding=pad, dilation=dil, groups=groups), 0.2)

    assert kernels._agrees(public)
    assert not kernels._agrees(lambda x, w, b, pad, dil, groups: public(x, w, b, pad, dil, groups) * 1.01)  # wrong result
    assert not kernels._agrees(lambda x, w, b, pad, dil, groups: public(x, w, b, pad, dil, groups).float())  # wrong dtype
    assert not kernels._agrees(lambda *args: torch.ops.aten.no_such_convolution(*args))  # missing op


def test_bf16_inputs_take_the_public_paths_where_onednn_refused_bf16(monkeypatch):
    """A CPU without AVX-512 or AVX-NE-CONVERT: oneDNN's bf16 convolution raises, its float32 one is fine."""
    g = torch.Generator().manual_seed(4)
    w, b = (torch.randn(8, 8, 3, 3, generator=g) / 24).double(), torch.randn(8, generator=g).double()
    conv = kernels.FusedConv((w, b), act=0.2).to(torch.bfloat16, memory_format=torch.channels_last)
    x = torch.randn(1, 8, 9, 9, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(kernels, "PRIVATE", kernels.PrivateOps(onednn=True, post_ops=True, bf16=False))
    assert not private_calls(lambda: conv(x)) and private_calls(lambda: conv.float()(x.float()))


def test_tested_torch_range_is_the_one_pyproject_allows():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    (torch_req,) = [r for r in project["dependencies"] if re.match(r"torch\W", r)]
    bounds = re.fullmatch(r"torch>=(\d+)\.(\d+),<(\d+)\.(\d+)", torch_req.replace(" ", ""))
    assert bounds, torch_req
    lo, hi = kernels.TESTED_TORCH
    assert (int(bounds[1]), int(bounds[2])) == lo and (int(bounds[3]), int(bounds[4])) == hi


@pytest.mark.parametrize("shape, kernel, dilation, groups", [
    ((16, 16), 3, 1, 1), ((1, 64), 3, 1, 1), ((20, 20), 3, 1, 20), ((20, 20), 5, 2, 1), ((128, 1), 3, 1, 1), ((20, 30), 1, 1, 1),
], ids=["dense", "stem", "depthwise", "dilated", "narrow", "pointwise"])
def test_each_cpu_kernel_in_bf16_is_the_convolution_to_bf16_rounding(shape, kernel, dilation, groups):
    """Every path FusedConv takes in bf16 on the CPU; all write channels_last (the next kernel's layout), from either."""
    (c_in, c_out), g = shape, torch.Generator().manual_seed(3)
    w = (torch.randn(c_out, c_in // groups, kernel, kernel, generator=g) / (c_in * kernel)).bfloat16()
    b = torch.randn(c_out, generator=g).bfloat16()
    conv = kernels.FusedConv((w.double(), b.double()), dilation=dilation, groups=groups, act=0.2)
    conv.to(torch.bfloat16, memory_format=torch.channels_last)  # as FastNetwork converts its weights
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, c_in, 37, 29, generator=g).bfloat16().contiguous(memory_format=layout)
        expected = nn.functional.leaky_relu(nn.functional.conv2d(x.float(), w.float(), b.float(), padding=conv.padding,
                                                                 dilation=dilation, groups=groups), 0.2)
        y = conv(x)
        assert y.dtype == torch.bfloat16 and (c_out == 1 or y.is_contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(y.float(), expected, atol=2e-2, rtol=1e-2)

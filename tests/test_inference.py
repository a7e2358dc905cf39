"""The inference form against the training form (eval mode) on real photos, every op and every task, and its back-ends."""

import random
import shutil

import pytest
import skimage.data
import torch
from conftest import uniform_genotype
from torch import nn

from hinas.data.degrade import seeded_noisy, sr_pair
from hinas.errors import ConfigError
from hinas.infer.backends import InferenceModel
from hinas.infer.fast import FastCell, FastNetwork
from hinas.infer.kernels import FusedConv, compose_pointwise, compose_separable, conv_affine, fold_sequential, pointwise
from hinas.nas.baselines import DnCNN
from hinas.nas.complexity import count_flops, count_params
from hinas.nas.genotype import Genotype
from hinas.nas.network import Cell, Network
from hinas.nas.ops import HINAS_OPS, register_op, unregister_op
from hinas.nas.space import SearchSpace, preset

TOLERANCE = 1e-4
EDGE_OPS = [op for op in HINAS_OPS if op != "zero"]  # a genotype never holds zero; FastCell is checked with it below


def photo(channels: int, size: tuple[int, int] = (72, 90)) -> torch.Tensor:
    """A crop of a scikit-image photo in [0, 1]: the cameraman (gray) or the astronaut (colour)."""
    img = skimage.data.camera() if channels == 1 else skimage.data.astronaut()
    x = torch.from_numpy(img).float().div(255)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)
    return x[:, 150 : 150 + size[0], 180 : 180 + size[1]].contiguous()


def degraded(space: SearchSpace) -> torch.Tensor:
    clean = photo(space.in_channels)
    x = seeded_noisy(clean, 25, "photo") if space.task == "denoise" else sr_pair(clean, space.scale)[0]
    return x.unsqueeze(0)


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm scales and shifts, running statistics from a few training-mode passes: folding must matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
        net.train()
        space = net.genotype.space
        for _ in range(2):
            net(photo(space.in_channels)[:, :32, :32] + 0.1 * torch.rand(2, space.in_channels, 32, 32, generator=g))
    return net.eval()


def mixed_genotype(space: SearchSpace, seed: int) -> Genotype:
    """Edges cycle through all six non-zero ops (each appears); inputs and the width path are drawn at random."""
    rng = random.Random(seed)
    ops = iter(EDGE_OPS * space.layers * space.nodes)
    cells = tuple(tuple(tuple((next(ops), rng.randrange(2 + n)) for _ in range(2)) for n in range(space.nodes))
                  for _ in range(space.layers))
    path = [rng.randrange(2)]
    for _ in range(space.layers - 1):
        path.append(min(space.levels - 1, max(0, path[-1] + rng.choice((-1, 0, 1)))))
    return Genotype(space, tuple(path), cells)


DENOISE = preset("paper-denoise")
SR = preset("paper-sr")  # colour, L=2, B=3, x4
NETWORKS = [
    # the three networks of the speed table (F=20), as the authors build them
    ("gray-sep3x3-000", uniform_genotype(DENOISE, "sep_conv_3x3", (0, 0, 0)), 20),
    ("gray-conv3x3-012", uniform_genotype(DENOISE, "conv_3x3", (0, 1, 2)), 20),
    ("gray-dil5x5-122", uniform_genotype(DENOISE, "dil_conv_5x5", (1, 2, 2)), 20),
    # every op in one network, random inputs and width paths
    *[(f"gray-mixed-{seed}", mixed_genotype(DENOISE, seed), 8) for seed in (1, 2)],
    ("color-mixed", mixed_genotype(DENOISE.replace(in_channels=3), 3), 8),
    *[(f"sr-x{s}-mixed", mixed_genotype(SR.replace(scale=s), s), 8) for s in (2, 3, 4)],
    ("sr-x2-gray-mixed", mixed_genotype(SR.replace(scale=2, in_channels=1), 7), 8),
]
CASES = [pytest.param(g, f, sep, id=f"{name}-{sep}") for name, g, f in NETWORKS for sep in ("keep", "dense")
         if sep == "keep" or any(op.startswith("sep") for op in g.op_counts())]  # "dense" changes only separable ops


@pytest.mark.parametrize("genotype, filters, separable", CASES)
def test_inference_form_equals_training_form_on_real_images(genotype, filters, separable):
    net = trained_like(Network(genotype, filters))
    x = degraded(genotype.space)
    with torch.no_grad():
        expected = net(x)
    fast = FastNetwork(net, separable)
    out = fast(x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < TOLERANCE
    assert not list(fast.parameters()) and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


def test_cells_with_the_zero_op_and_an_unknown_op_equal_the_trained_cell():
    register_op("scaled_skip", lambda c, affine: ScaledSkip())
    try:
        genotype = ((("sep_conv_5x5", 1), ("zero", 0)), (("scaled_skip", 2), ("dil_conv_3x3", 0)),
                    (("zero", 1), ("zero", 3)), (("identity", 4), ("conv_3x3", 2)))
        cell = Cell(genotype, 6)
        trained_like_cell(cell)
        s0, s1 = torch.randn(2, 6, 17, 23), torch.randn(2, 6, 17, 23)
        with torch.no_grad():
            expected = cell(s0.clone(), s1.clone())
        for separable in ("keep", "dense"):
            out = FastCell(cell, 6, separable)(s0.clone(), s1.clone())
            assert (out - expected).abs().max().item() < TOLERANCE
    finally:
        unregister_op("scaled_skip")


class ScaledSkip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def trained_like_cell(cell: nn.Module) -> None:
    for m in cell.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    cell.eval()


def test_cells_reading_only_their_inputs_with_one_kernel_are_one_convolution():
    """The authors' uniform conv cells: all eight edges, four nodes, one convolution writing the cell's output directly."""
    fast = FastNetwork(trained_like(Network(uniform_genotype(DENOISE, "conv_3x3", (0, 1, 2)), 20)))
    for cell, width in zip(fast.cells, (20, 30, 40)):
        (step,) = cell.steps
        assert step.inputs == (0, 1) and step.targets == (0, 1, 2, 3) and cell.direct
        assert step.body.weight.shape == (4 * width, 2 * width, 3, 3)


def test_folding_primitives_are_exact():
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(5, 7, 3, padding=2, dilation=2, bias=True), nn.BatchNorm2d(7)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 5, 12, 11)
    with torch.no_grad():
        fused = fold_sequential(nn.Sequential(conv, bn.eval(), nn.LeakyReLU(0.2)))
        assert len(fused) == 1
        torch.testing.assert_close(fused(x), nn.functional.leaky_relu(bn(conv(x)), 0.2), atol=1e-5, rtol=1e-5)
        dw, pw = nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.Conv2d(5, 4, 1)
        w, b = compose_separable(conv_affine(dw), conv_affine(pw))
        torch.testing.assert_close(nn.functional.conv2d(x, w.float(), b.float(), padding=1), pw(dw(x)), atol=1e-5, rtol=1e-5)
        first, second = fold_sequential(nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), nn.Conv2d(6, 3, 1)))
        w, b = compose_pointwise(first, second)
        torch.testing.assert_close(nn.functional.conv2d(x, w.float(), b.float(), padding=1), second(first(x)),
                                   atol=1e-5, rtol=1e-5)


LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("source", LAYOUTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("target", LAYOUTS, ids=["to-nchw", "to-nhwc"])
def test_pointwise_products_read_and_write_either_layout_and_channel_slices(source, target):
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 5, 6, 9).contiguous(memory_format=source), torch.randn(7, 5), torch.randn(7)
    expected = nn.functional.conv2d(x, w[:, :, None, None], b)
    y = pointwise(x, w, b, target)
    assert y.is_contiguous(memory_format=target)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    buffer = torch.full((2, 12, 6, 9), 7.0).contiguous(memory_format=target)
    node = buffer[:, 3:10]
    pointwise(x, w, b, out=node)  # written in place, then added to twice, with and without a bias
    pointwise(x, w, None, out=node, accumulate=True)
    pointwise(x, w, b, out=node, accumulate=True)
    torch.testing.assert_close(buffer[:, 3:10], 3 * expected - b[:, None, None], atol=1e-5, rtol=1e-5)
    assert (buffer[:, :3] == 7).all() and (buffer[:, 10:] == 7).all()


@pytest.mark.parametrize("shape, kernel, dilation, groups, layout, path", [
    ((16, 16), 3, 1, 1, torch.contiguous_format, "winograd"),
    ((16, 24), 3, 1, 1, torch.channels_last, "onednn"),  # could be Winograd, but the input is channels_last
    ((3, 64), 3, 1, 1, torch.contiguous_format, "direct nchw"),
    ((20, 20), 3, 1, 20, torch.channels_last, "depthwise"),
    ((20, 20), 5, 2, 1, torch.contiguous_format, "dilated"),
    ((128, 1), 3, 1, 1, torch.channels_last, "taps"),
    ((128, 2), 5, 2, 1, torch.contiguous_format, "taps"),
    ((20, 30), 1, 1, 1, torch.channels_last, "pointwise"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_cpu_kernel_equals_the_plain_convolution(shape, kernel, dilation, groups, layout, path):
    """Every path FusedConv takes on the CPU, at an odd size and at one smaller than the kernel's reach."""
    (c_in, c_out), g = shape, torch.Generator().manual_seed(3)
    w, b = torch.randn(c_out, c_in // groups, kernel, kernel, generator=g) / (c_in * kernel), torch.randn(c_out, generator=g)
    conv = FusedConv((w, b), dilation=dilation, groups=groups, act=0.2)
    assert conv.narrow == (path == "taps") and conv.is_pointwise == (path == "pointwise")
    assert conv.winograd == (path in ("winograd", "onednn") or (path == "taps" and kernel == 3))
    for size in ((37, 29), (3, 2)):
        x = torch.randn(2, c_in, *size, generator=g).contiguous(memory_format=layout)
        expected = nn.functional.leaky_relu(nn.functional.conv2d(x, w, b, padding=conv.padding, dilation=dilation,
                                                                 groups=groups), 0.2)
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("source", LAYOUTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("target", LAYOUTS, ids=["to-nchw", "to-nhwc"])
@pytest.mark.parametrize("c_out", [7, 20])  # 7: fewer outputs than MKL handles well from NCHW, padded to 16
def test_pointwise_convolutions_write_the_layout_asked_for(source, target, c_out):
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(c_out, 12, 1, 1, generator=g), torch.randn(c_out, generator=g)
    conv = FusedConv((w, b), act=0.2)
    conv.memory_format = target
    x = torch.randn(2, 12, 9, 13, generator=g).contiguous(memory_format=source)
    y = conv(x)
    assert y.is_contiguous(memory_format=target)
    torch.testing.assert_close(y, nn.functional.leaky_relu(nn.functional.conv2d(x, w, b), 0.2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "nhwc"])
def test_pointwise_convolutions_add_to_features_in_place(layout):
    """What the cells and the decoder use to sum without temporaries: into a whole feature, a channel slice, or plus."""
    g = torch.Generator().manual_seed(5)
    w, b, bias = torch.randn(6, 5, 1, 1, generator=g), torch.randn(6, generator=g), torch.randn(6, generator=g)
    conv = FusedConv((w, b))
    x = torch.randn(2, 5, 11, 7, generator=g).contiguous(memory_format=layout)
    product = nn.functional.conv2d(x, w)
    for shape, part in (((2, 6, 11, 7), slice(None)), ((2, 14, 11, 7), slice(4, 10))):
        buffer = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
        expected = buffer.clone()
        expected[:, part] += product + bias[:, None, None]
        conv.into(x, buffer[:, part], bias, accumulate=True)
        torch.testing.assert_close(buffer, expected, atol=1e-5, rtol=1e-5)
        conv.into(x, buffer[:, part], None, accumulate=False)
        torch.testing.assert_close(buffer[:, part], product, atol=1e-5, rtol=1e-5)
    other = torch.randn(2, 6, 11, 7, generator=g).contiguous(memory_format=torch.channels_last)
    for act in (None, 0.0, 0.2):
        expected = other + product + b[:, None, None]
        expected = expected if act is None else nn.functional.leaky_relu(expected, act)
        torch.testing.assert_close(conv.plus(x, other.clone(), act), expected, atol=1e-5, rtol=1e-5)


def test_batches_are_restored_image_by_image():
    net = trained_like(Network(uniform_genotype(DENOISE, "sep_conv_3x3", (0, 1, 1)), 8))
    x = torch.cat([degraded(DENOISE), degraded(DENOISE).flip(-1)])
    with torch.no_grad():
        expected = torch.cat([net(image[None]) for image in x])
    assert (FastNetwork(net)(x) - expected).abs().max().item() < TOLERANCE


def test_inference_model_holds_no_autograd_state():
    net = trained_like(Network(mixed_genotype(DENOISE, 5), 4))
    model = InferenceModel(net)
    x = degraded(DENOISE).requires_grad_()
    y = model(x)
    assert not y.requires_grad and not list(model.parameters())
    with torch.no_grad():
        assert (y - net(x)).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("genotype", [mixed_genotype(DENOISE, 4), mixed_genotype(SR.replace(scale=3), 5)],
                         ids=["denoise", "sr-x3"])
def test_onnxruntime_backend_equals_training_form_at_any_size(genotype):
    net = trained_like(Network(genotype, 8))
    model = InferenceModel(net, "onnxruntime")
    for crop in ((slice(None), slice(None)), (slice(3, 40), slice(5, 58))):
        x = degraded(genotype.space)[(..., *crop)]
        with torch.no_grad():
            expected = net(x)
        assert (model(x) - expected).abs().max().item() < TOLERANCE


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compile_backend_equals_training_form():
    net = trained_like(Network(uniform_genotype(SearchSpace(layers=2, nodes=2, filters=4), "sep_conv_3x3", (0, 1)), 4))
    x = degraded(net.genotype.space)[..., :48, :48]
    with torch.no_grad():
        expected = net(x)
    assert (InferenceModel(net, "compile")(x) - expected).abs().max().item() < TOLERANCE


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="backend: 'tensorrt' is not one of torch, compile, onnxruntime"):
        InferenceModel(Network(mixed_genotype(DENOISE, 1), 4), "tensorrt")


def test_dncnn17_is_the_standard_network():
    net = DnCNN()
    assert count_params(net) == 556_096  # the 0.56 M of the DnCNN paper
    assert int(count_flops(net, (1, 1, 64, 64)) * 64 / 1e9) == 290  # GFLOP at 512x512, as in the speed table
    x = torch.rand(1, 1, 16, 16)
    nn.init.zeros_(net.body[-1].weight)
    torch.testing.assert_close(net.eval()(x), x)  # residual: predicts the noise and subtracts it

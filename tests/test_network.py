"""The derived network against the authors' parameter counts (docs/HINAS.md) and the standard FLOP convention."""

import pytest
import torch
from conftest import uniform_genotype
from torch import nn

from hinas.nas.complexity import count_flops, count_params
from hinas.nas.network import Network
from hinas.nas.space import SearchSpace, preset

DENOISE = preset("paper-denoise")
SR = preset("paper-sr")

AUTHORS = [
    # (space, op in every edge, width path, filters, parameters of the authors' network)
    (DENOISE, "conv_3x3", (0, 0, 0), 20, 238_369),
    (DENOISE, "conv_3x3", (0, 1, 2), 20, 377_849),
    (DENOISE, "conv_3x3", (1, 2, 2), 20, 472_169),
    (DENOISE, "sep_conv_3x3", (0, 0, 0), 20, 180_769),
    (DENOISE, "sep_conv_3x3", (0, 1, 2), 20, 229_849),
    (DENOISE, "dil_conv_5x5", (1, 2, 2), 20, 996_969),
    (SR.replace(scale=2), "conv_3x3", (0, 0), 16, 250_476),
    (SR.replace(scale=2), "conv_3x3", (1, 2), 16, 339_356),
    (SR.replace(scale=4), "conv_3x3", (0, 0), 16, 291_984),
    (SR.replace(scale=4), "sep_conv_3x3", (1, 2), 16, 320_384),
]


@pytest.mark.parametrize("space, op, path, filters, expected", AUTHORS)
def test_parameter_counts_equal_the_authors_networks(space, op, path, filters, expected):
    assert count_params(Network(uniform_genotype(space, op, path), filters=filters)) == expected


def test_endpoint_is_the_last_level0_layer_before_the_final_one():
    assert Network(uniform_genotype(DENOISE, "conv_3x3", (0, 1, 2)), 20).endpoint_layer == 0
    assert Network(uniform_genotype(DENOISE, "conv_3x3", (0, 0, 1)), 20).endpoint_layer == 1
    assert Network(uniform_genotype(DENOISE, "conv_3x3", (0, 0, 0)), 20).endpoint_layer is None  # final layer: reduce
    assert Network(uniform_genotype(DENOISE, "conv_3x3", (1, 2, 2)), 20).endpoint_layer is None  # never at 0: reduce


@pytest.mark.parametrize(
    "space, size",
    [
        (SearchSpace(task="denoise", in_channels=1), (2, 1, 33, 47)),
        (SearchSpace(task="denoise", in_channels=3), (1, 3, 21, 18)),
        *[(SearchSpace(task="sr", in_channels=3, scale=s, layers=2, nodes=3), (1, 3, 13, 17)) for s in (2, 3, 4, 8)],
        (SearchSpace(task="sr", in_channels=1, scale=3, layers=2, nodes=3), (2, 1, 9, 11)),
    ],
)
def test_output_shapes_odd_sizes_included(space, size):
    net = Network(uniform_genotype(space, "sep_conv_3x3", (0, 1, 1)[: space.layers]))
    y = net(torch.rand(size))
    n, c, h, w = size
    assert y.shape == (n, c, h * space.scale, w * space.scale)


def test_denoising_is_residual_and_sr_adds_to_bicubic():
    """With the head zeroed, the net returns its input (denoise) or the MATLAB-bicubic upscale (SR)."""
    from hinas.nas.resize import imresize

    for space, x in [(DENOISE, torch.rand(1, 1, 16, 16)), (SR, torch.rand(1, 3, 8, 8))]:
        net = Network(uniform_genotype(space, "conv_3x3", (0,) * space.layers)).eval()
        nn.init.zeros_(net.decoder.head.weight)
        nn.init.zeros_(net.decoder.head.bias)
        expected = x if space.task == "denoise" else imresize(x, space.scale)
        torch.testing.assert_close(net(x), expected)


def test_flops_follow_the_2x_mac_convention():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    assert count_flops(conv, (1, 4, 10, 10)) == 2 * 8 * 100 * 4 * 9 + 8 * 100
    # HiNAS layout, conv3x3 cells, path [0,1,2], 512x512 gray: 172 GFLOP as measured for the authors' build.
    net = Network(uniform_genotype(DENOISE, "conv_3x3", (0, 1, 2)), 20)
    assert round(count_flops(net, (1, 1, 512, 512)) / 1e9) == 172
    per_layer = count_flops(net, (1, 1, 64, 64), by_depth=2)
    assert {"stem.stem1", "layers.0", "layers.1", "layers.2"} <= set(per_layer)
    assert sum(per_layer.values()) == count_flops(net, (1, 1, 64, 64))

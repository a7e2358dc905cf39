"""evaluate_model against figures computed by hand, and tiled restoration against whole-image restoration."""

import math

import numpy as np
import pytest
import torch
from conftest import uniform_genotype
from torch import nn

from hinas.data.degrade import noise_seed
from hinas.eval.scoring import Bicubic, evaluate_model
from hinas.infer.tiling import tiled_forward
from hinas.nas.network import Network
from hinas.nas.space import preset


class Constant(nn.Module):
    """Ignores its input: the output is known exactly, whatever the noise."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


def test_evaluate_model_reproduces_a_hand_computed_example():
    clean = torch.full((1, 16, 16), 138 / 255)
    result = evaluate_model(Constant(128 / 255), [("flat", clean)], task="denoise", sigma=25)
    # Every pixel is off by 10 grey levels: MSE = 100, PSNR = 10 log10(255^2 / 100).
    assert result["psnr"] == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    # Flat images: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 255)^2.
    c1 = (0.01 * 255) ** 2
    assert result["ssim"] == pytest.approx((2 * 128 * 138 + c1) / (128**2 + 138**2 + c1), abs=1e-12)
    # The noisy input, recomputed here from the documented seeding: N(0, 25/255), unclipped, then uint8.
    g = torch.Generator().manual_seed(noise_seed("flat", 25))
    noise = torch.randn((1, 16, 16), generator=g).numpy()
    noisy = np.clip(np.floor((138 / 255 + noise * 25 / 255) * 255 + 0.5), 0, 255)
    expected = 10 * math.log10(255**2 / np.mean((noisy.astype(np.float64) - 138) ** 2))
    assert result["input_psnr"] == pytest.approx(expected, abs=1e-9)
    assert result["per_image"][0]["name"] == "flat" and result["images"] == 1
    assert result["convention"]["quantize_uint8"] and result["convention"]["shave"] == 0


def test_evaluate_model_is_identical_across_runs_and_reports_sr_convention():
    photo = torch.rand(3, 40, 44)
    a = evaluate_model(nn.Identity(), [("p", photo)], task="denoise", sigma=50)
    b = evaluate_model(nn.Identity(), [("p", photo)], task="denoise", sigma=50)
    assert a["psnr"] == b["psnr"]  # seeded test noise
    sr = evaluate_model(Bicubic(3), [("p", photo)], task="sr", scale=3)
    assert sr["psnr"] == pytest.approx(sr["input_psnr"]) and sr["convention"]["y_channel"] and sr["convention"]["shave"] == 3


class Pointwise(nn.Module):
    """A per-pixel model (nearest upsampling for SR): tiles must reproduce it exactly."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 3, 1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1)


@pytest.mark.parametrize("scale", [1, 3])
def test_tiles_reassemble_exactly_for_a_pointwise_model(scale):
    model, x = Pointwise(scale), torch.rand(2, 3, 37, 53)
    torch.testing.assert_close(tiled_forward(model, x, scale, tile=16, overlap=5), tiled_forward(model, x, scale))


def test_tiled_network_output_stays_close_to_the_whole_image():
    net = Network(uniform_genotype(preset("paper-denoise"), "conv_3x3", (0, 0, 0)), filters=4).eval()
    x = torch.rand(1, 1, 64, 64)
    whole, tiled = tiled_forward(net, x), tiled_forward(net, x, tile=40, overlap=24)
    assert (whole - tiled).abs().mean() < 0.05 * (whole - x).abs().mean() + 1e-6


def test_tiled_forward_keeps_no_graph_whatever_the_model():
    """Evaluation and restoring hold whole images: an autograd graph over them cost 17 GB in notebook 04 once."""
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 40, 40)
    assert not tiled_forward(model, x).requires_grad and not tiled_forward(model, x, tile=16, overlap=4).requires_grad

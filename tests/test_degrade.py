import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
import torch

from hinas.data.degrade import add_noise, bicubic_down, bicubic_up, modcrop, noise_seed, seeded_noisy, sr_pair, stable_seed
from hinas.errors import ConfigError
from hinas.eval.scoring import bicubic_baseline


def test_noise_has_the_requested_sigma_and_is_not_clipped():
    clean = torch.full((1, 256, 256), 0.5)
    noisy = add_noise(clean, 25)
    assert (noisy - clean).std().item() == pytest.approx(25 / 255, rel=0.02)
    assert noisy.min() < 0.25 and noisy.max() > 0.75
    edge = torch.ones(1, 64, 64)
    assert add_noise(edge, 50).max() > 1
    assert add_noise(edge, 50, clip=True).max() <= 1


def test_one_sigma_per_batch_item():
    clean = torch.full((3, 1, 128, 128), 0.5)
    residual = add_noise(clean, torch.tensor([0.0, 30.0, 70.0])) - clean
    assert residual[0].abs().max() == 0
    assert residual[1].std().item() == pytest.approx(30 / 255, rel=0.03)
    assert residual[2].std().item() == pytest.approx(70 / 255, rel=0.03)
    with pytest.raises(ConfigError, match="one sigma per batch item"):
        add_noise(clean, torch.tensor([10.0, 20.0]))
    with pytest.raises(ConfigError, match=">= 0"):
        add_noise(clean, -5)


def test_noise_seed_is_stable_across_processes():
    # hashlib, not hash(): the same in every process regardless of PYTHONHASHSEED
    assert noise_seed("Set12/01", 25) == noise_seed("Set12/01", 25.0) == 55795797
    assert noise_seed("Set12/01", 50) != noise_seed("Set12/02", 50) != noise_seed("Set12/01", 25)
    code = "from hinas.data.degrade import noise_seed; print(noise_seed('Set12/01', 25))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=Path(__file__).parents[1]
    )
    assert int(out.stdout) == 55795797


def test_stable_seeds_fit_the_32_bits_torch_keeps():
    seeds = {stable_seed(run, index) for run in range(3) for index in range(100)}
    assert len(seeds) == 300 and max(seeds) < 2**32


def test_seeded_noisy_repeats_and_ignores_global_rng():
    clean = torch.rand(3, 32, 32)
    a = seeded_noisy(clean, 25, "kodim01")
    torch.manual_seed(123)
    assert torch.equal(a, seeded_noisy(clean, 25, "kodim01"))
    assert not torch.equal(a, seeded_noisy(clean, 25, "kodim02"))
    assert seeded_noisy(clean, 25, "kodim01", clip=True).max() <= 1


def test_modcrop_and_bicubic_shapes():
    img = torch.rand(3, 103, 98)
    assert modcrop(img, 4).shape == (3, 100, 96)
    lr = bicubic_down(modcrop(img, 4), 4)
    assert lr.shape == (3, 25, 24)
    assert bicubic_up(lr, 4).shape == (3, 100, 96)
    flat = torch.full((1, 30, 30), 0.3)
    assert torch.allclose(bicubic_down(flat, 3), torch.full((1, 10, 10), 0.3))


def test_sr_pair_quantises_the_lr_image():
    img = torch.rand(3, 50, 47)
    lr, hr = sr_pair(img, 3)
    assert hr.shape == (3, 48, 45) and lr.shape == (3, 16, 15)
    assert torch.equal(lr * 255, (lr * 255).round())


def test_bicubic_baseline_on_a_real_photo():
    camera = torch.from_numpy(skimage.data.camera()[:200, :240]).float()[None] / 255
    result = bicubic_baseline([("camera", camera)], 2)
    psnr, ssim = result["camera"]
    assert 24 < psnr < 35 and 0.6 < ssim < 1
    assert bicubic_baseline([("camera", camera)], 4)["camera"][0] < psnr

import dataclasses
import json
import math

import numpy as np
import pytest
import skimage.data
import skimage.metrics
import torch

from hinas.data.degrade import quantize
from hinas.errors import ConfigError
from hinas.eval.metrics import Convention, convention_for, measure, psnr, rgb_to_y, ssim


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1) / 255).float()


def to_uint8(t: torch.Tensor) -> np.ndarray:
    arr = (quantize(t.double()) * 255).round().byte().numpy().transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def noisy_pair(arr: np.ndarray, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    clean = to_tensor(arr)
    g = torch.Generator().manual_seed(1)
    return clean + torch.randn(clean.shape, generator=g) * sigma / 255, clean


@pytest.mark.parametrize("image, sigma", [("camera", 15), ("camera", 50), ("astronaut", 25), ("coffee", 10)])
def test_ssim_equals_skimage_on_the_valid_region(image, sigma):
    # skimage filters with reflect padding, then averages only after cropping (win-1)/2 = 5 pixels
    # from each border: the 'valid' region of Wang et al.'s MATLAB code, so the two agree exactly.
    arr = getattr(skimage.data, image)()[40:200, 60:250]
    noisy, clean = noisy_pair(arr, sigma)
    a, b = to_uint8(noisy), to_uint8(clean)
    expected = skimage.metrics.structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1 if a.ndim == 3 else None,
    )
    assert float(ssim(noisy, clean)) == pytest.approx(expected, abs=1e-10)


def test_psnr_equals_skimage_on_uint8_images():
    for name in ("camera", "astronaut"):
        noisy, clean = noisy_pair(getattr(skimage.data, name)()[:128, :160], 30)
        expected = skimage.metrics.peak_signal_noise_ratio(to_uint8(clean), to_uint8(noisy))
        assert float(psnr(noisy, clean)) == pytest.approx(expected, abs=1e-10)


def test_constant_error_of_one_level_gives_20_log10_255():
    target = torch.full((3, 16, 16), 100 / 255)
    assert float(psnr(target + 1 / 255, target)) == pytest.approx(20 * math.log10(255), abs=1e-12)
    assert 20 * math.log10(255) == pytest.approx(48.1308036, abs=1e-7)


def test_shave_removes_the_border_and_identical_images_score_perfectly():
    target = torch.rand(1, 40, 40)
    pred = target.clone()
    pred[..., :3, :] = 0
    assert math.isinf(float(psnr(pred, target, shave=3)))
    assert float(psnr(pred, target)) < 40
    assert float(ssim(target, target)) == pytest.approx(1.0, abs=1e-12)


def test_luma_matches_bt601_limited_range():
    white, black, red = (torch.full((3, 1, 1), v) for v in (1.0, 0.0, 0.0))
    red[0] = 1
    assert float(rgb_to_y(white)) == pytest.approx(235, abs=1e-9)
    assert float(rgb_to_y(black)) == pytest.approx(16, abs=1e-9)
    assert float(rgb_to_y(red)) == pytest.approx(16 + 65.481, abs=1e-9)
    assert float(rgb_to_y(torch.full((1, 1, 1), 0.5))) == pytest.approx(127.5)  # gray is luma already
    with pytest.raises(ValueError, match="1 or 3 channels"):
        rgb_to_y(torch.zeros(2, 4, 4))


def test_quantize_rounds_halves_up_and_clamps():
    x = torch.tensor([-0.2, 0.5 / 255, 1.49 / 255, 1.3], dtype=torch.float64)
    assert (quantize(x) * 255).tolist() == [0, 1, 1, 255]


def test_batches_give_one_value_per_image():
    target = torch.rand(3, 3, 32, 32)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    p, s = psnr(pred, target, y_channel=True, shave=2), ssim(pred, target, y_channel=True, shave=2)
    assert p.shape == s.shape == (3,)
    for i in range(3):
        assert float(psnr(pred[i], target[i], y_channel=True, shave=2)) == pytest.approx(float(p[i]))
        assert float(ssim(pred[i], target[i], y_channel=True, shave=2)) == pytest.approx(float(s[i]))
    with pytest.raises(ValueError, match="equal shape"):
        psnr(pred, target[:, :1])


def test_conventions_are_standard_and_serialisable():
    sr, dn = convention_for("sr", 3), convention_for("denoise")
    assert (sr.y_channel, sr.shave, sr.quantize_uint8) == (True, 3, True)
    assert (dn.y_channel, dn.shave, dn.noise_seeding is not None) == (False, 0, True)
    assert Convention(**json.loads(json.dumps(dataclasses.asdict(sr)))) == sr
    with pytest.raises(ConfigError, match="unknown task"):
        convention_for("deblur")


def test_measure_applies_the_convention():
    target = torch.rand(2, 3, 48, 48)
    pred = target + 0.03 * torch.randn_like(target)
    p, s = measure(pred, target, convention_for("sr", 4))
    assert torch.equal(p, psnr(pred, target, shave=4, y_channel=True))
    assert torch.equal(s, ssim(pred, target, shave=4, y_channel=True))
    p_raw, _ = measure(pred, target, dataclasses.replace(convention_for("sr", 4), quantize_uint8=False))
    assert not torch.equal(p_raw, p)

"""Degradations that make (input, target) pairs: Gaussian noise and MATLAB-style bicubic downscaling.

Test noise is seeded from the image's name with hashlib, never Python's
``hash()`` (salted per process), and drawn on the CPU, so every run and every
device sees the same noisy test images. SR inputs are made as the MATLAB
scripts behind published tables make them: mod-crop, antialiased bicubic
``imresize(hr, 1/scale)``, uint8 rounding.
"""

from __future__ import annotations

import hashlib

import torch

from hinas.errors import ConfigError
from hinas.nas.resize import imresize


def add_noise(
    clean: torch.Tensor,
    sigma: float | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """``clean + N(0, sigma/255)``; ``sigma`` on the 0-255 scale, a number or one value per batch item.

    Unclipped by default, as the denoising benchmarks add it; the noise is drawn on
    the generator's device (CPU by default) and then moved to ``clean``'s device.
    """
    sigma = torch.as_tensor(sigma, dtype=clean.dtype)
    if (sigma < 0).any():
        raise ConfigError(f"noise sigma must be >= 0 on the 0-255 scale, got {sigma.tolist()}")
    if sigma.dim() == 1:
        if clean.dim() != 4 or sigma.numel() != clean.shape[0]:
            n = sigma.numel()
            raise ConfigError(f"one sigma per batch item needs an (N,C,H,W) batch of N={n}, got {tuple(clean.shape)}")
        sigma = sigma.view(-1, 1, 1, 1)
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=device).to(clean.device)
    noisy = clean + noise * (sigma.to(clean.device) / 255)
    return noisy.clamp(0, 1) if clip else noisy


def stable_seed(*parts: object) -> int:
    """A seed fixed by ``parts`` on every machine and Python process.

    32 bits, because torch's CPU generator keeps only the low 32 bits of a seed.
    """
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def noise_seed(key: str, sigma: float) -> int:
    """The test-noise seed of one image at one sigma (25 and 25.0 give the same)."""
    return stable_seed(key, float(sigma))


def seeded_noisy(clean: torch.Tensor, sigma: float, key: str, clip: bool = False) -> torch.Tensor:
    """The test-time noisy copy of ``clean``: identical for the same key and sigma on any device."""
    generator = torch.Generator().manual_seed(noise_seed(key, sigma))
    return add_noise(clean, sigma, generator=generator, clip=clip)


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop H and W down to multiples of ``scale`` (bottom and right), so HR and LR align exactly."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB ``imresize(hr, 1/scale)``: antialiased bicubic, not rounded."""
    return imresize(hr, 1 / scale)


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB ``imresize(lr, scale)``: the bicubic baseline every SR table starts from."""
    return imresize(lr, scale)


def sr_pair(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) as the evaluation scripts make them: mod-cropped HR and its uint8-rounded downscale."""
    hr = modcrop(hr, scale)
    return quantize(bicubic_down(hr, scale)), hr


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0,1] and round to the uint8 grid, halves up as MATLAB's ``im2uint8``."""
    return torch.floor(x.clamp(0, 1) * 255 + 0.5) / 255

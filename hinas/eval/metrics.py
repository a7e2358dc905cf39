"""PSNR and SSIM as the restoration community computes them, plus the convention record.

Published numbers differ by tenths of a dB depending on rounding, luma
weights and border shave, so every choice lives in a ``Convention`` that is
written next to the numbers. SSIM follows Wang et al.'s MATLAB ``ssim_index``:
11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, data range 255, mean over
the 'valid' region only; this equals scikit-image's ``structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``, which
filters with reflect padding and then crops the 5 border pixels it padded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hinas.data.degrade import quantize
from hinas.errors import ConfigError

LUMA = (65.481, 128.553, 24.966)
"""BT.601 limited-range luma weights for RGB in [0,1], as MATLAB's rgb2ycbcr (offset 16)."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
NOISE_SEEDING = "torch CPU generator seeded by sha256(image key, sigma); N(0, sigma/255), unclipped"


@dataclass(frozen=True)
class Convention:
    """How a number was measured; ``dataclasses.asdict`` of it goes into every metrics file."""

    task: str
    scale: int
    quantize_uint8: bool
    y_channel: bool
    shave: int
    ssim_window: int = SSIM_WINDOW
    ssim_sigma: float = SSIM_SIGMA
    ssim_k1: float = SSIM_K[0]
    ssim_k2: float = SSIM_K[1]
    noise_seeding: str | None = None


def convention_for(task: str, scale: int = 1) -> Convention:
    """The community standard: SR on Y with ``scale`` pixels shaved; denoising on all channels, no shave."""
    if task == "sr":
        return Convention("sr", scale, quantize_uint8=True, y_channel=True, shave=scale)
    if task == "denoise":
        return Convention("denoise", 1, quantize_uint8=True, y_channel=False, shave=0, noise_seeding=NOISE_SEEDING)
    raise ConfigError(f"unknown task {task!r}; expected 'sr' or 'denoise'")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``(..., 1, H, W)`` on the 0-255 scale (white 235, black 16) from RGB in [0,1].

    A one-channel image is taken as luma already and only scaled to 0-255, as the
    MATLAB scripts behind the published tables leave gray images unconverted:
    with Set14's gray bridge.png read this way, bicubic Set14 lands within 0.01 dB
    of the table, against 0.09 dB when it is converted as R=G=B.
    """
    x = x.double()
    if x.shape[-3] == 1:
        return x * 255
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs 1 or 3 channels, got shape {tuple(x.shape)}")
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return 16 + (x * w).sum(dim=-3, keepdim=True)


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, shave: int, y_channel: bool, quantize_uint8: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 (N, C, H, W) on the 0-255 scale, quantised, converted and shaved."""
    if pred.shape != target.shape or pred.dim() not in (3, 4):
        raise ValueError(
            "expected two (C,H,W) or (N,C,H,W) tensors of equal shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    out = []
    for img in (pred, target):
        img = img.double()
        if quantize_uint8:
            img = quantize(img)
        img = rgb_to_y(img) if y_channel else img * 255
        if shave:
            img = img[..., shave:-shave, shave:-shave]
        out.append(img if img.dim() == 4 else img.unsqueeze(0))
    return out[0], out[1]


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values if like.dim() == 4 else values[0]


def psnr(
    pred: torch.Tensor, target: torch.Tensor, *, shave: int = 0, y_channel: bool = False, quantize_uint8: bool = True
) -> torch.Tensor:
    """PSNR in dB (data range 255) per image: a 0-d tensor for (C,H,W), shape (N,) for (N,C,H,W)."""
    a, b = _prepare(pred, target, shave, y_channel, quantize_uint8)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return _per_image(10 * torch.log10(255.0**2 / mse), pred)


@functools.lru_cache(maxsize=16)
def _gaussian(window: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The SSIM window, built once per device and dtype (the loss asks for it every step); never an inference tensor,
    so a window first built under ``inference_mode`` still serves the training loss."""
    with torch.inference_mode(False):
        x = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
        g = torch.exp(-(x**2) / (2 * sigma**2))
        return g / g.sum()


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
    k: tuple[float, float] = SSIM_K,
) -> torch.Tensor:
    """Per-pixel SSIM of (N, C, H, W) images over the 'valid' region (MATLAB ``filter2(w, x, 'valid')``).

    Differentiable, so the training loss uses it on float images; :func:`ssim`
    applies it to quantised images on the 0-255 scale.
    """
    n, c, h, w = a.shape
    g = _gaussian(window, sigma, a.dtype, a.device)
    gy, gx = g.view(1, 1, -1, 1).expand(c, 1, -1, 1), g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gy, groups=c), gx, groups=c)

    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    shave: int = 0,
    y_channel: bool = False,
    quantize_uint8: bool = True,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    k: tuple[float, float] = SSIM_K,
) -> torch.Tensor:
    """Mean SSIM per image (channels averaged), same shapes and return as :func:`psnr`."""
    a, b = _prepare(pred, target, shave, y_channel, quantize_uint8)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} after shaving, got {tuple(a.shape[-2:])}")
    return _per_image(ssim_map(a, b, 255.0, window, sigma, k).mean(dim=(1, 2, 3)), pred)


def measure(restored: torch.Tensor, target: torch.Tensor, convention: Convention) -> tuple[torch.Tensor, torch.Tensor]:
    """(PSNR, SSIM) per image, quantised, converted and shaved as ``convention`` says."""
    c = convention
    kw = dict(shave=c.shave, y_channel=c.y_channel, quantize_uint8=c.quantize_uint8)
    window = dict(window=c.ssim_window, sigma=c.ssim_sigma, k=(c.ssim_k1, c.ssim_k2))
    return psnr(restored, target, **kw), ssim(restored, target, **kw, **window)

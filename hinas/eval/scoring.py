"""Evaluation under the community's conventions: degrade deterministically, restore (tiled if asked), measure.

:func:`evaluate_model` takes any ``torch.nn.Module`` that maps a degraded batch
in [0, 1] to a restored one, so users can score their own networks exactly as
hinas scores its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm  # plain text: it shows in terminals, notebooks and exported notebooks alike

from hinas.data.degrade import bicubic_up, seeded_noisy, sr_pair
from hinas.errors import ConfigError, DataError, ModelError
from hinas.eval.metrics import Convention, convention_for, measure
from hinas.hardware import exact_float32
from hinas.infer.tiling import tiled_forward

Images = Iterable[tuple[str, torch.Tensor]]


class Bicubic(nn.Module):
    """The SR baseline: MATLAB bicubic upscaling."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic_up(x, self.scale)


def baseline(name: str, task: str, scale: int = 1) -> nn.Module:
    """``noisy`` returns the noisy input (denoising); ``bicubic`` upscales (SR)."""
    if name == "noisy" and task == "denoise":
        return nn.Identity()
    if name == "bicubic" and task == "sr":
        return Bicubic(scale)
    raise ConfigError(f"baseline {name!r} does not apply to task {task!r}; use 'noisy' for denoise, 'bicubic' for sr")


def degrade(name: str, clean: torch.Tensor, task: str, sigma: float | None,
            scale: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded input, target) for one test image, identical on every run and machine."""
    if task == "denoise":
        if sigma is None:
            raise ConfigError("denoising evaluation needs sigma (noise level on the 0-255 scale)")
        return seeded_noisy(clean, sigma, name), clean
    if task == "sr":
        if scale is None:
            raise ConfigError("SR evaluation needs scale")
        return sr_pair(clean, scale)
    raise ConfigError(f"unknown task {task!r}; expected 'denoise' or 'sr'")


def check_measurable(images: Images, convention: Convention) -> None:
    """Refuse, by name, an image too small for SSIM's window once mod-cropped and shaved (before a run, not during it)."""
    need = convention.ssim_window + 2 * convention.shave
    for name, img in images:
        h, w = img.shape[-2:]
        if min(h, w) // convention.scale * convention.scale - 2 * convention.shave < convention.ssim_window:
            raise DataError(f"image {name} is {h}x{w}, too small to measure: SSIM needs {need}x{need} pixels "
                            f"after mod-crop to x{convention.scale}")


def _input_channels(model: nn.Module) -> int | None:
    """Channels a hinas model takes (its own ``in_channels``, or its search space's); None for other modules."""
    if isinstance(getattr(model, "in_channels", None), int):
        return model.in_channels
    space = getattr(getattr(model, "genotype", None), "space", None) or getattr(model, "space", None)
    return getattr(space, "in_channels", None)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), next(model.buffers(), None))  # inference forms hold buffers only
    return tensor.device if tensor is not None else torch.device("cpu")


def evaluate_model(
    model: nn.Module,
    dataset: Images,
    *,
    task: str,
    sigma: float | None = None,
    scale: int | None = None,
    tile: int = 0,
    overlap: int = 16,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean and per-image PSNR/SSIM of ``model`` on ``dataset`` ((name, clean image) pairs) under the standard convention.

    Denoising: ``N(0, sigma/255)`` noise seeded per image name, unclipped; SR:
    mod-crop, MATLAB bicubic downscale, uint8 LR. Outputs are clamped and
    rounded to uint8 before measuring; SR is measured on Y with ``scale``
    pixels shaved. The result records that convention, and the same figures
    for the degraded input (noisy image, or bicubic upscaling for SR).
    ``tile`` 0 runs images whole unless their estimated memory calls for tiles
    (see :func:`~hinas.infer.tiling.tiled_forward`). An output of the wrong shape
    or dtype, or with NaN or infinite values, raises :class:`ModelError`.
    """
    convention: Convention = convention_for(task, scale or 1)
    device = _device_of(model)
    channels = _input_channels(model)
    was_training = model.training
    model.eval()
    rows = []
    for name, clean in tqdm(list(dataset), desc="evaluate", disable=not progress, leave=False):
        if channels is not None and clean.shape[0] != channels:
            model.train(was_training)
            kind = "gray" if channels == 1 else "colour"
            raise DataError(f"image {name} has {clean.shape[0]} channel(s) but the model takes {channels} ({kind}); "
                            f"load the set with channels={channels} (load_images(..., channels={channels})) to convert it")
        check_measurable([(name, clean)], convention)
        degraded, target = degrade(name, clean, task, sigma, scale)
        try:
            with exact_float32():  # no TF32 in a score: it would move PSNR by hundredths of a dB on Ampere+ GPUs
                restored = tiled_forward(model, degraded.unsqueeze(0).to(device), scale or 1, tile, overlap)[0].float().cpu()
        except ModelError as err:
            model.train(was_training)
            raise ModelError(f"evaluate_model: model on image {name}: {err}") from None
        reference = degraded if task == "denoise" else bicubic_up(degraded, scale)
        p, s = measure(restored, target, convention)
        bp, bs = measure(reference, target, convention)
        rows.append({"name": name, "psnr": float(p), "ssim": float(s), "input_psnr": float(bp), "input_ssim": float(bs)})
        if save_dir is not None:
            from hinas.data.images import save_image

            save_image(restored, Path(save_dir) / f"{Path(name).with_suffix('')}.png")
    model.train(was_training)
    if not rows:
        raise ConfigError("evaluate_model: the dataset holds no images")

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "task": task, "sigma": sigma, "scale": scale, "images": len(rows),
        "psnr": mean("psnr"), "ssim": mean("ssim"), "input_psnr": mean("input_psnr"), "input_ssim": mean("input_ssim"),
        "per_image": rows, "convention": dataclasses.asdict(convention),
    }


def examples(model: nn.Module, images: Images, *, task: str, sigma: float | None = None, scale: int | None = None,
             limit: int = 3) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, degraded, restored, target) for the first ``limit`` images, for side-by-side figures."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    rows = []
    for name, clean in list(images)[:limit]:
        degraded, target = degrade(name, clean, task, sigma, scale)
        restored = tiled_forward(model, degraded.unsqueeze(0).to(device), scale or 1)[0].float().cpu()
        rows.append((name, degraded, restored.clamp(0, 1), target))
    model.train(was_training)
    return rows


def score(psnr: float, ssim: float) -> float:
    """The authors' selection score."""
    return ssim + psnr / 100


def bicubic_baseline(images: Iterable[tuple[str, torch.Tensor]], scale: int) -> dict[str, tuple[float, float]]:
    """(PSNR, SSIM) per image of bicubic upscaling under the SR convention, to check against MATLAB's table.

    Pass gray images as one channel: their luma is the gray value itself (see ``rgb_to_y``).
    """
    convention = convention_for("sr", scale)
    results = {}
    for name, img in images:
        lr, hr = sr_pair(img, scale)
        p, s = measure(bicubic_up(lr, scale), hr, convention)
        results[name] = (float(p), float(s))
    return results

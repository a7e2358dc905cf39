"""Evaluation under the community's conventions: degrade deterministically, restore (tiled if asked), measure.

:func:`evaluate_model` takes any ``torch.nn.Module`` that maps a degraded batch
in [0, 1] to a restored one, so users can score their own networks exactly as
hinas scores its own.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .degrade import bicubic_up, seeded_noisy, sr_pair
from .errors import ConfigError, DataError, HinasError
from .metrics import Convention, convention_for, measure

if TYPE_CHECKING:
    from .settings import EvalConfig

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


def degrade(name: str, clean: torch.Tensor, task: str, sigma: float | None, scale: int | None) -> tuple[torch.Tensor, torch.Tensor]:
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


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


@torch.no_grad()
def restore(model: nn.Module, x: torch.Tensor, scale: int = 1, tile: int = 0, overlap: int = 16) -> torch.Tensor:
    """Run ``model`` on a (N, C, H, W) batch, in overlapping tiles of side ``tile`` when that is > 0.

    Overlaps are averaged, so memory is bounded by the tile size while borders
    between tiles stay seamless.
    """
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    if overlap >= tile:
        raise ConfigError(f"tile_overlap ({overlap}) must be smaller than tile ({tile})")
    stride = tile - overlap
    out = weight = None
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            y = model(x[..., top : top + tile, left : left + tile])
            if out is None:
                out = y.new_zeros(*y.shape[:2], h * scale, w * scale)
                weight = y.new_zeros(1, 1, h * scale, w * scale)
            region = (..., slice(top * scale, top * scale + y.shape[-2]), slice(left * scale, left * scale + y.shape[-1]))
            out[region] += y
            weight[region] += 1
    return out / weight


def check_measurable(images: Images, convention: Convention) -> None:
    """Refuse, by name, an image too small for SSIM's window once mod-cropped and shaved (before a run, not during it)."""
    need = convention.ssim_window + 2 * convention.shave
    for name, img in images:
        h, w = img.shape[-2:]
        if min(h, w) // convention.scale * convention.scale - 2 * convention.shave < convention.ssim_window:
            raise DataError(f"image {name} is {h}x{w}, too small to measure: SSIM needs {need}x{need} pixels "
                            f"after mod-crop to x{convention.scale}")


def _input_channels(model: nn.Module) -> int | None:
    """Channels a hinas network or supernet takes (from its search space); None for other modules."""
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
        restored = restore(model, degraded.unsqueeze(0).to(device), scale or 1, tile, overlap)[0].float().cpu()
        reference = degraded if task == "denoise" else bicubic_up(degraded, scale)
        p, s = measure(restored, target, convention)
        bp, bs = measure(reference, target, convention)
        rows.append({"name": name, "psnr": float(p), "ssim": float(s), "input_psnr": float(bp), "input_ssim": float(bs)})
        if save_dir is not None:
            from .data import save_image

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


def load_for_eval(cfg: "EvalConfig", device: torch.device | None = None) -> tuple[nn.Module, str, list[int], int | None]:
    """(model on ``device``, task, scales to run, input channels) for a baseline name or a trained run/checkpoint.

    A trained network comes in the form ``cfg.backend`` names (its fast inference form unless ``training``).
    """
    from .inference import InferenceModel
    from .network import Network, load_model

    device = device or torch.device("cpu")
    if cfg.model in ("noisy", "bicubic"):
        task = cfg.task or ("denoise" if cfg.model == "noisy" else "sr")
        return baseline(cfg.model, task, 1), task, list(cfg.scales), None
    path = Path(cfg.model)
    model = load_model(path / "best.pt" if path.is_dir() else path).to(device).eval()
    space = model.space
    if cfg.backend != "training" and isinstance(model, Network):  # DnCNN has no inference form: it runs as trained
        model = InferenceModel(model, cfg.backend)
    return model, space.task, [space.scale], space.in_channels


def evaluate_run(cfg: "EvalConfig", out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on every set and noise level (or scale); writes metrics.json and per_image.csv to ``out``."""
    import csv

    from .data import load_images
    from .runtime import RunDir, atomic_write_bytes, check_run_dir, pick_device, write_json

    check_run_dir(Path(out), overwrite=overwrite)
    model, task, scales, channels = load_for_eval(cfg, pick_device(cfg.device))
    image_sets = {name: load_images(name, cfg.data_root or None, channels=channels) for name in cfg.sets}
    run = RunDir(out, cfg, overwrite=overwrite)
    results, rows = [], []
    try:
        for set_name, images in image_sets.items():
            for level in cfg.sigmas if task == "denoise" else scales:
                sigma, scale = (level, None) if task == "denoise" else (None, int(level))
                if isinstance(model, Bicubic):
                    model.scale = scale
                save_dir = run / "images" / Path(set_name).name / (f"sigma{level:g}" if sigma is not None else f"x{scale}")
                res = evaluate_model(model, images, task=task, sigma=sigma, scale=scale, tile=cfg.tile, overlap=cfg.tile_overlap,
                                     save_dir=save_dir if cfg.save_images else None, progress=progress)
                summary = {k: res[k] for k in ("task", "sigma", "scale", "images", "psnr", "ssim", "input_psnr", "input_ssim")}
                results.append({"set": set_name, **summary})
                rows += [{"set": set_name, "sigma": sigma, "scale": scale, **r} for r in res["per_image"]]
                run.log(event="result", set=set_name, **summary)
    except HinasError:  # e.g. an image that fails to decode half-way: leave nothing partial behind
        run.discard()
        raise
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(run / "per_image.csv", text.getvalue().encode())
    metrics = {"model": cfg.model, "results": results, "convention": res["convention"]}
    write_json(run / "metrics.json", metrics)
    run.close()
    return metrics


def examples(model: nn.Module, images: Images, *, task: str, sigma: float | None = None, scale: int | None = None,
             limit: int = 3) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, degraded, restored, target) for the first ``limit`` images, for side-by-side figures."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    rows = []
    for name, clean in list(images)[:limit]:
        degraded, target = degrade(name, clean, task, sigma, scale)
        restored = restore(model, degraded.unsqueeze(0).to(device), scale or 1)[0].float().cpu()
        rows.append((name, degraded, restored.clamp(0, 1), target))
    model.train(was_training)
    return rows


def results_markdown(results: list[dict[str, Any]]) -> str:
    """A Markdown table of summary rows (set, sigma or scale, PSNR/SSIM, input PSNR) as evaluate_run writes them."""
    lines = ["| set | level | PSNR (dB) | SSIM | input PSNR (dB) | gain (dB) | images |", "|---|---|---|---|---|---|---|"]
    for r in results:
        level = f"sigma {r['sigma']:g}" if r["task"] == "denoise" else f"x{r['scale']}"
        lines.append(f"| {r['set']} | {level} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['input_psnr']:.2f} | "
                     f"{r['psnr'] - r['input_psnr']:+.2f} | {r['images']} |")
    return "\n".join(lines)

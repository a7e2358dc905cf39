"""An evaluation run: a trained network or a baseline scored on named sets, written to a run directory."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hinas.data.images import load_images
from hinas.engine.rundir import RunDir, check_run_dir
from hinas.engine.settings import EvalConfig
from hinas.errors import HinasError
from hinas.eval.scoring import Bicubic, baseline, evaluate_model
from hinas.files import atomic_write_bytes, write_json
from hinas.hardware import keep_freed_memory, pick_device, set_threads
from hinas.infer.backends import InferenceModel
from hinas.nas.network import Network, load_model


def load_for_eval(cfg: EvalConfig, device: torch.device | None = None) -> tuple[nn.Module, str, list[int], int | None]:
    """(model on ``device``, task, scales to run, input channels) for a baseline name or a trained run/checkpoint.

    A trained network comes in the form ``cfg.backend`` names (its fast inference form unless ``training``).
    """
    device = device or torch.device("cpu")
    if cfg.model in ("noisy", "bicubic"):
        task = cfg.task or ("denoise" if cfg.model == "noisy" else "sr")
        return baseline(cfg.model, task, 1), task, list(cfg.scales), None
    path = Path(cfg.model)
    model = load_model(path / "best.pt" if path.is_dir() else path).to(device).eval()
    task, scale, channels = model.task, model.scale, model.in_channels
    if cfg.backend != "training" and isinstance(model, Network):  # DnCNN has no inference form: it runs as trained
        model = InferenceModel(model, cfg.backend)
    return model, task, [scale], channels


def evaluate_run(cfg: EvalConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on every set and noise level (or scale); writes metrics.json and per_image.csv to ``out``."""
    check_run_dir(Path(out), overwrite=overwrite)
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()  # full images map fresh feature maps each; reusing freed memory halved a CPU evaluation
    model, task, scales, channels = load_for_eval(cfg, device)
    image_sets = {name: load_images(name, cfg.data_root or None, channels=channels) for name in cfg.sets}
    run = RunDir(out, cfg, overwrite=overwrite)
    try:
        metrics = _evaluate_into(run, cfg, model, task, scales, image_sets, progress)
    except HinasError:  # e.g. an image that fails to decode half-way, or a full disk: leave nothing partial behind
        run.discard()
        raise
    finally:
        run.close()
    return metrics


def _evaluate_into(run: RunDir, cfg: EvalConfig, model: nn.Module, task: str, scales: list[int],
                   image_sets: dict[str, Any], progress: bool) -> dict[str, Any]:
    results, rows = [], []
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
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(run / "per_image.csv", text.getvalue().encode())
    metrics = {"model": cfg.model, "results": results, "convention": res["convention"]}
    write_json(run / "metrics.json", metrics)
    return metrics


def results_markdown(results: list[dict[str, Any]]) -> str:
    """A Markdown table of summary rows (set, sigma or scale, PSNR/SSIM, input PSNR) as evaluate_run writes them."""
    lines = ["| set | level | PSNR (dB) | SSIM | input PSNR (dB) | gain (dB) | images |", "|---|---|---|---|---|---|---|"]
    for r in results:
        level = f"sigma {r['sigma']:g}" if r["task"] == "denoise" else f"x{r['scale']}"
        lines.append(f"| {r['set']} | {level} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['input_psnr']:.2f} | "
                     f"{r['psnr'] - r['input_psnr']:+.2f} | {r['images']} |")
    return "\n".join(lines)

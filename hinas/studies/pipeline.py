"""The two DVC stages that are not search, retrain or evaluate: preparing data and reporting results.

``prepare`` fetches the named sources (see ``hinas.fetch``) and writes a manifest
with a digest of every set the pipeline reads, so a changed image re-runs what
depends on it. ``report`` gathers the evaluation metrics of a pipeline's run
folder into one JSON metrics file and a Markdown table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hinas.data.fetch import fetch
from hinas.data.images import ImageSet, load_images
from hinas.files import atomic_write_bytes, write_json
from hinas.jobs.evaluate import results_markdown


def set_digest(images: ImageSet) -> str:
    """sha256 over the names and bytes of every file of a set, in order."""
    h = hashlib.sha256()
    for name, path in zip(images.names, images.paths):
        h.update(name.encode())
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()


def prepare(sources: list[str], sets: list[str], data_root: str | None, out: str | Path) -> dict[str, Any]:
    """Fetch ``sources`` into ``data_root`` (complete ones are skipped) and write the manifest of ``sets`` to ``out``."""
    fetched = fetch(sources, data_root, progress=False) if sources else {}
    manifest = {"sources": fetched, "sets": {}}
    for name in sets:
        images = load_images(name, data_root)
        manifest["sets"][name] = {"images": len(images), "sha256": set_digest(images)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, manifest)
    return manifest


def flat_results(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Evaluation summary rows as ``{task}/{sigma or scale}/{set}/{psnr, ssim, input_psnr}`` numbers."""
    flat = {}
    for r in rows:
        level = f"sigma{r['sigma']:g}" if r["task"] == "denoise" else f"x{r['scale']}"
        for key in ("psnr", "ssim", "input_psnr"):
            flat[f"{r['task']}/{level}/{r['set']}/{key}"] = r[key]
    return flat


def report(runs: str | Path, out_json: str | Path, out_md: str | Path) -> dict[str, Any]:
    """Collect every ``evaluate_*/*/metrics.json`` under ``runs`` into flat metrics and a Markdown table."""
    runs = Path(runs)
    rows = [r for path in sorted(runs.glob("evaluate_*/*/metrics.json")) for r in json.loads(path.read_text())["results"]]
    flat = flat_results(rows)
    if not rows:
        raise FileNotFoundError(f"no evaluation metrics under {runs}/evaluate_*/")
    write_json(Path(out_json), flat)
    atomic_write_bytes(Path(out_md), ("# Results\n\n" + results_markdown(rows) + "\n").encode())
    return flat

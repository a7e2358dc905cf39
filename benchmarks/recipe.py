"""Training recipe study: PSNR against training time for the derived networks, one recipe change at a time.

Every recipe retrains the same genotype through ``hinas retrain`` for the same ``minutes`` of training steps
(the step time is measured early and fixes the iteration count), validating on 256x256 centre crops of the ``embedded-val``
photos at sigma 25. Runs live under ``runs/recipe/<name>`` and are skipped when their metrics exist, so an
interrupted study resumes. Prints a table, writes benchmarks/results/recipe.json and a plot of the curves.

    python benchmarks/recipe.py [--minutes 5] [--threads 1] [--only NAME ...] [--genotype FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from hinas.engine.settings import SearchConfig, TrainConfig, resolve
from hinas.files import write_json
from hinas.jobs.retrain import retrain
from hinas.nas.genotype import random_genotype

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BASE = ("iterations=1000000", "sigma=25", "val_crop=256", "val_images=4", "data=embedded-train", "val_data=embedded-val")
RECIPES: dict[str, tuple[str, ...]] = {
    "sgd-poly (cpu-demo)": (),
    "sgd-cosine lr0.05": ("schedule=cosine", "lr=0.05"),
    "adam-onecycle 2e-3": ("optimizer=adam", "lr=0.002", "schedule=onecycle"),
    "adam-cosine 1e-3": ("optimizer=adam", "lr=0.001", "schedule=cosine"),
    "adamw-onecycle 2e-3": ("optimizer=adamw", "lr=0.002", "schedule=onecycle", "weight_decay=0.01"),
    "adam-onecycle 5e-3": ("optimizer=adam", "lr=0.005", "schedule=onecycle"),
}
"""Name -> overrides on top of the ``cpu-demo`` retraining preset and ``BASE``."""
SECOND = {
    "patch 64": ("patch=64",),
    "batch 16": ("batch=16",),
    "mse only": ("ssim_weight=0",),
    "l1": ("pixel_loss=l1", "ssim_weight=0"),
    "F=16": ("filters=16",),
}
"""Changes tried on top of the best first-wave recipe (``--base-recipe``)."""


def run(name: str, overrides: tuple[str, ...], genotype: Path, minutes: float, threads: int, out: Path) -> dict[str, Any]:
    folder = out / name.replace(" ", "_").replace("(", "").replace(")", "")
    if (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
    else:
        cfg = resolve(TrainConfig, "cpu-demo", overrides=[*BASE, f"genotype={genotype}", f"minutes={minutes}",
                                                          f"threads={threads}", "val_every=300", *overrides])
        metrics = retrain(cfg, folder, overwrite=True, progress=False)
    history = json.loads((folder / "history.json").read_text())
    return {"name": name, "overrides": list(overrides), "val_psnr": metrics["val_psnr"], "iterations": metrics["iterations"],
            "step_seconds": metrics["step_seconds"], "seconds": metrics["seconds"],
            "cpu_seconds": metrics.get("cpu_seconds"), "curve": [(r["seconds"], r["val_psnr"]) for r in history],
            "cpu_curve": [(r["cpu_seconds"], r["val_psnr"]) for r in history if "cpu_seconds" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--genotype", type=Path, help="genotype to retrain (default: random genotype 0 of the cpu-demo space)")
    ap.add_argument("--base-recipe", help="first-wave recipe the second wave changes; without it only the first wave runs")
    ap.add_argument("--only", nargs="*", help="run only these recipes")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe")
    args = ap.parse_args()
    genotype = args.genotype
    if genotype is None:
        genotype = random_genotype(resolve(SearchConfig, "cpu-demo").space, 0).save(args.out / "genotype.json")
    todo = dict(RECIPES)
    if args.base_recipe:
        base = RECIPES[args.base_recipe]
        todo.update({f"{args.base_recipe} + {k}": (*base, *v) for k, v in SECOND.items()})
    rows = [run(name, ov, genotype, args.minutes, args.threads, args.out) for name, ov in todo.items()
            if not args.only or name in args.only]
    print(f"{'recipe':44s} {'val dB':>7s} {'iters':>6s} {'s/step':>7s}")
    for r in sorted(rows, key=lambda r: -r["val_psnr"]):
        print(f"{r['name']:44s} {r['val_psnr']:7.2f} {r['iterations']:6d} {r['step_seconds']:7.3f}")
    write_json(RESULTS / "recipe.json", {"meta": {"minutes": args.minutes, "threads": args.threads, "cpu": platform.processor()
                                                  or platform.machine(), "genotype": str(genotype)}, "rows": rows})
    from hinas.viz.plots import plot_curves

    curves = {r["name"]: [(t / 60, db) for t, db in r["curve"]] for r in rows}
    plot_curves(curves, "minutes (training and validation)", "embedded-val PSNR (dB)",
                f"Retraining recipes, sigma 25, {args.threads} thread(s)").savefig(RESULTS / "recipe.png", dpi=110)


if __name__ == "__main__":
    main()

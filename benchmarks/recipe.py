"""Training recipe study: PSNR against training time for the derived networks, one recipe change at a time.

Every recipe retrains the same genotype through ``hinas retrain`` for the same ``minutes`` of training steps
(the step time is measured early and fixes the iteration count), validating on 256x256 centre crops of the ``embedded-val``
photos at sigma 25. Runs live under ``runs/recipe/<name>`` and are skipped when their metrics exist, so an
interrupted study resumes. Prints a table, writes benchmarks/results/recipe.json and a plot of the curves.

    python benchmarks/recipe.py [--minutes 4] [--threads 1] [--workers 2] [--only NAME ...] [--genotype FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hinas.engine.settings import SearchConfig, TrainConfig, resolve
from hinas.files import write_json
from hinas.jobs.retrain import retrain
from hinas.nas.genotype import random_genotype

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BASE = ("iterations=1000000", "sigma=25", "val_crop=256", "val_images=4", "data=embedded-train", "val_data=embedded-val")
ADAM = ("optimizer=adam", "lr=0.002", "schedule=onecycle")
L1 = ("pixel_loss=l1", "ssim_weight=0")
RECIPES: dict[str, tuple[str, ...]] = {
    "sgd-poly (paper, cpu-demo before)": ("lr=0.02",),
    "sgd-cosine lr0.05": ("schedule=cosine", "lr=0.05"),
    "adam-onecycle 2e-3": ADAM,
    "adam-cosine 1e-3": ("optimizer=adam", "lr=0.001", "schedule=cosine"),
    "adamw-onecycle 2e-3": ("optimizer=adamw", "lr=0.002", "schedule=onecycle", "weight_decay=0.01"),
    "adam-onecycle 2e-3 + l1": (*ADAM, *L1),
    "adam + l1 + patch 64": (*ADAM, *L1, "patch=64"),
    "adam + l1 + batch 16": (*ADAM, *L1, "batch=16"),
    "adam + l1 + F=16": (*ADAM, *L1, "filters=16"),
}
"""Name -> overrides on top of the ``cpu-demo`` retraining preset (as it was: SGD, poly, MSE + SSIM) and ``BASE``:
optimiser and schedule first, then the loss, patch, batch and width on top of the best of those."""
PRESET_BEFORE = ("optimizer=sgd", "schedule=poly", "pixel_loss=mse", "ssim_weight=0.6", "filters=8", "patch=40", "batch=8")
"""The ``cpu-demo`` retraining recipe before this study, which every row starts from."""


def run(name: str, overrides: tuple[str, ...], genotype: Path, minutes: float, threads: int, out: Path) -> dict[str, Any]:
    folder = out / "".join(c if c.isalnum() or c in "-.=" else "_" for c in name)
    if (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
    else:
        cfg = resolve(TrainConfig, "cpu-demo", overrides=[*PRESET_BEFORE, *BASE, f"genotype={genotype}", f"minutes={minutes}",
                                                          f"threads={threads}", "val_every=300", *overrides])
        metrics = retrain(cfg, folder, overwrite=True, progress=False)
    history = json.loads((folder / "history.json").read_text())
    return {"name": name, "overrides": list(overrides), "val_psnr": metrics["val_psnr"], "iterations": metrics["iterations"],
            "step_seconds": metrics["step_seconds"], "seconds": metrics["seconds"],
            "cpu_seconds": metrics.get("cpu_seconds"), "curve": [(r["seconds"], r["val_psnr"]) for r in history],
            "cpu_curve": [(r["cpu_seconds"], r["val_psnr"]) for r in history if "cpu_seconds" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--genotype", type=Path, help="genotype to retrain (default: random genotype 0 of the cpu-demo space)")
    ap.add_argument("--workers", type=int, default=1, help="recipes trained at once (each on --threads threads)")
    ap.add_argument("--only", nargs="*", help="run only these recipes")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe")
    args = ap.parse_args()
    genotype = args.genotype
    if genotype is None:
        genotype = random_genotype(resolve(SearchConfig, "cpu-demo").space, 0).save(args.out / "genotype.json")
    todo = {name: ov for name, ov in RECIPES.items() if not args.only or name in args.only}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(run, todo, todo.values(), [genotype] * len(todo), [args.minutes] * len(todo),
                             [args.threads] * len(todo), [args.out] * len(todo)))
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

"""The ``cpu-hour`` preset measured: wall and CPU time of each phase, the supernet's margin over its noisy input, the
retrained network's PSNR on Set12 and BSD68 at sigma 25, and its validation curve against CPU time.

Run the main job first (from a fresh clone, as the README says), then read its folder:

    HINAS_DATA_ROOT=../shared/datasets /usr/bin/time -f "%e s" hinas demo --preset cpu-hour --out runs/cpu-hour
    python benchmarks/cpu_hour.py --run runs/cpu-hour          (seconds)

Writes ``benchmarks/results/cpu_hour.json`` and ``cpu_hour.png``; the target is 28.7 dB on BSD68 within 60 minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hinas.files import write_json
from hinas.studies.results import selected_epoch
from hinas.viz.plots import plot_curves

RESULTS = Path(__file__).parent / "results"
TARGET_DB, TARGET_MIN = 28.7, 60.0


def read(run: Path) -> dict:
    search, picked = selected_epoch(run / "search")
    trained = json.loads((run / "retrain" / "metrics.json").read_text())
    tested = json.loads((run / "evaluate" / "metrics.json").read_text())
    curve = [(h["cpu_seconds"] / 60, h["val_psnr"]) for h in json.loads((run / "retrain" / "history.json").read_text())]
    return {
        "search": {"wall_min": search["seconds"] / 60, "cpu_min": search["cpu_seconds"] / 60, "steps": search["steps"],
                   "selected_epoch": search["best_epoch"], "supernet_psnr": search["val_psnr"],
                   "input_psnr": picked["input_psnr"], "margin_db": search["val_psnr"] - picked["input_psnr"],
                   "path": search["genotype"]["path"]},
        "retrain": {"wall_min": trained["seconds"] / 60, "cpu_min": trained["cpu_seconds"] / 60,
                    "iterations": trained["iterations"], "params_m": trained["params_m"], "filters": trained["filters"],
                    "precision": trained["precision"]},
        "test": {r["set"]: {"psnr": r["psnr"], "ssim": r["ssim"], "input_psnr": r["input_psnr"]} for r in tested["results"]},
        "curve_cpu_min_psnr": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu-hour", help="the folder hinas demo --preset cpu-hour wrote")
    parser.add_argument("--wall", type=float, help="the whole command's wall seconds, as /usr/bin/time printed them")
    parser.add_argument("--out", default=str(RESULTS / "cpu_hour.json"))
    args = parser.parse_args()
    out = read(Path(args.run))
    out["wall_min"] = args.wall / 60 if args.wall else out["search"]["wall_min"] + out["retrain"]["wall_min"]
    bsd68 = out["test"].get("BSD68", {}).get("psnr")
    out["target"] = {"bsd68_db": TARGET_DB, "minutes": TARGET_MIN,
                     "met": bsd68 is not None and bsd68 >= TARGET_DB and out["wall_min"] <= TARGET_MIN}
    print(f"{'phase':<10} {'wall min':>9} {'CPU min':>9}")
    for phase in ("search", "retrain"):
        print(f"{phase:<10} {out[phase]['wall_min']:9.1f} {out[phase]['cpu_min']:9.1f}")
    print(f"{'total':<10} {out['wall_min']:9.1f}")
    s = out["search"]
    print(f"supernet at epoch {s['selected_epoch']}: {s['supernet_psnr']:.2f} dB, noisy input {s['input_psnr']:.2f} dB "
          f"(margin {s['margin_db']:.2f} dB)")
    for name, r in out["test"].items():
        print(f"{name:>8} sigma 25: {r['psnr']:.2f} dB / SSIM {r['ssim']:.4f} (noisy {r['input_psnr']:.2f} dB)")
    print(f"target {TARGET_DB} dB on BSD68 within {TARGET_MIN:g} min: {'met' if out['target']['met'] else 'NOT met'}")
    write_json(Path(args.out), out)
    fig = plot_curves({"retraining (4 held-out Train400 images)": out["curve_cpu_min_psnr"]}, "CPU minutes (2 threads)",
                      "validation PSNR (dB)", f"cpu-hour: BSD68 {bsd68:.2f} dB after {out['wall_min']:.0f} min"
                      if bsd68 else "cpu-hour")
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()

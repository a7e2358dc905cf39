"""Accuracy of bf16 against float32: a fixed-budget retrain in each, and bf16 inference of a trained network.

(a) ``hinas retrain`` of one hand-made genotype (sep_conv_3x3 in every node, path [0,0,0], paper denoising space)
at F=20 on Train400, sigma 25, with ``amp=bf16`` and ``amp=off`` (float32), ``--seeds`` seeds each, the same small
budget for all (``--iterations`` steps of batch 8, 48x48 patches, one thread); each run is scored by
``hinas evaluate`` on Set12 at sigma 25 (the float32 inference form, so only training differs).
(b) the seed-0 float32 network's inference form in float32 and in bf16 (``InferenceModel(precision=...)``) on the
same sets and noise.

Resumable: a run or evaluation whose metrics.json exists in ``--out`` (under runs/, git-ignored), and the
inference comparison once in its inference.json, are not redone; an interrupted retrain starts again. ``--collect``
trains nothing and reports the runs finished so far (while another instance is still training, say).
Writes benchmarks/results/precision_accuracy.json and prints a table.

    nice -n 5 python benchmarks/precision_accuracy.py [--out runs/precision_accuracy] [--seeds 3] [--iterations 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SETS = ("Set12", "BSD68")
RETRAIN_SETS = ("Set12",)
"""Each retrain is scored on Set12 only: BSD68 takes about three minutes per network on a busy core."""
SIGMA = 25.0
PRECISIONS = {"bf16": "bf16", "float32": "off"}  # name -> the amp setting


def hinas(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "hinas", *args], env=env, check=True, cwd=ROOT)


def genotype_file(out: Path) -> Path:
    from hinas.nas.genotype import Genotype
    from hinas.nas.space import preset

    space = preset("paper-denoise")
    cell = tuple((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) for _ in range(space.nodes))
    path = out / "genotype.json"
    if not path.exists():
        Genotype(space, (0, 0, 0), (cell,) * space.layers).save(path)
    return path


def retrain(out: Path, genotype: Path, precision: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    run = out / f"{precision}-seed{seed}"
    if args.collect and not (run / "eval" / "metrics.json").exists():
        return None
    if not (run / "metrics.json").exists():
        settings = {"data": "Train400", "data_root": args.data_root, "sigma": SIGMA, "filters": 20, "batch": 8, "patch": 48,
                    "iterations": args.iterations, "val_every": max(1, args.iterations // 3), "val_images": 4,
                    "val_crop": 128, "threads": 1, "device": "cpu", "amp": PRECISIONS[precision], "seed": seed}
        hinas("retrain", "--genotype", str(genotype), "--out", str(run), "--overwrite", "--quiet",
              *[f"--set={k}={v}" for k, v in settings.items()])
    metrics = json.loads((run / "metrics.json").read_text())
    ev = run / "eval"
    if not (ev / "metrics.json").exists():
        hinas("evaluate", "--model", str(run), "--out", str(ev), "--overwrite", "--quiet",
              f"--set=sets=[{','.join(RETRAIN_SETS)}]", f"--set=sigmas=[{SIGMA:g}]",
              f"--set=data_root={args.data_root}", "--set=threads=1", "--set=device=cpu")
    scores = {r["set"]: r["psnr"] for r in json.loads((ev / "metrics.json").read_text())["results"]}
    return {"precision": precision, "seed": seed, "trained_in": metrics["precision"], "layout": metrics["layout"],
            "seconds": metrics["seconds"], "val_psnr": metrics["val_psnr"], "psnr": scores}


def inference(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """PSNR and SSIM of one network's inference form in float32 and in bf16, same images and noise."""
    import torch

    from hinas.data.images import load_images
    from hinas.eval.scoring import evaluate_model
    from hinas.infer.backends import InferenceModel
    from hinas.nas.network import load_model

    torch.set_num_threads(1)
    net = load_model(run / "best.pt").eval()
    out: dict[str, Any] = {"network": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run)}
    for name in SETS:
        images = load_images(name, args.data_root, channels=1)
        res = {}
        for precision in ("float32", "bf16"):
            model = InferenceModel(net, "torch", precision=precision)
            start = time.process_time()
            r = evaluate_model(model, images, task="denoise", sigma=SIGMA)
            res[precision] = {"psnr": r["psnr"], "ssim": r["ssim"], "cpu_s": time.process_time() - start}
        res["psnr_bf16_minus_float32"] = res["bf16"]["psnr"] - res["float32"]["psnr"]
        res["ssim_bf16_minus_float32"] = res["bf16"]["ssim"] - res["float32"]["ssim"]
        out[name] = res
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "precision_accuracy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--data-root", default="/work/shared/datasets")
    parser.add_argument("--collect", action="store_true", help="train nothing: report the finished runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    genotype = genotype_file(args.out)
    runs = []
    for seed in range(args.seeds):  # interleaved, so a stopped run leaves pairs
        for precision in PRECISIONS:
            r = retrain(args.out, genotype, precision, seed, args)
            if r is None:
                continue
            runs.append(r)
            print(f"{precision:8s} seed {seed}: " + "  ".join(f"{s} {r['psnr'][s]:.3f} dB" for s in RETRAIN_SETS)
                  + f"  ({r['seconds']:.0f} s)", flush=True)
    summary = {}
    for s in RETRAIN_SETS:
        done = {p: [r["psnr"][s] for r in runs if r["precision"] == p] for p in PRECISIONS}
        means = {p: statistics.mean(v) if v else float("nan") for p, v in done.items()}
        summary[s] = {**{f"mean_{p}": v for p, v in means.items()}, **{f"seeds_{p}": len(v) for p, v in done.items()},
                      "bf16_minus_float32": means["bf16"] - means["float32"]}
    infer, cached = None, args.out / "inference.json"
    if cached.exists():
        infer = json.loads(cached.read_text())
    elif (args.out / "float32-seed0" / "eval" / "metrics.json").exists():
        infer = inference(args.out / "float32-seed0", args)
        cached.write_text(json.dumps(infer, indent=1) + "\n")
    setup = {"genotype": "sep_conv_3x3 x2 per node, path [0,0,0], paper-denoise space", "filters": 20, "data": "Train400",
             "sigma": SIGMA, "batch": 8, "patch": 48, "iterations": args.iterations, "threads": 1, "seeds": args.seeds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision_accuracy.json").write_text(json.dumps(
        {"setup": setup, "retrain": runs, "retrain_summary": summary, "inference": infer}, indent=1) + "\n")

    print(f"\n(a) retrain {args.iterations} steps, PSNR at sigma {SIGMA:g} (float32 inference form)")
    print(f"{'seed':>4s} " + " ".join(f"{s + ' ' + p:>16s}" for s in RETRAIN_SETS for p in PRECISIONS))
    for seed in range(args.seeds):
        row = {(r["precision"]): r["psnr"] for r in runs if r["seed"] == seed}
        print(f"{seed:4d} " + " ".join(f"{row[p][s]:16.3f}" if p in row else f"{'-':>16s}" for s in RETRAIN_SETS
                                       for p in PRECISIONS))
    print(" mean " + " ".join(f"{summary[s]['mean_' + p]:15.3f}" for s in RETRAIN_SETS for p in PRECISIONS))
    for s in RETRAIN_SETS:
        print(f"{s}: mean bf16 - mean float32 = {summary[s]['bf16_minus_float32']:+.3f} dB")
    if infer is None:
        return
    print(f"\n(b) inference of {infer['network']}: bf16 against float32")
    for s in SETS:
        r = infer[s]
        print(f"{s}: float32 {r['float32']['psnr']:.3f} dB, bf16 {r['bf16']['psnr']:.3f} dB, "
              f"difference {r['psnr_bf16_minus_float32']:+.4f} dB (SSIM {r['ssim_bf16_minus_float32']:+.5f})")


if __name__ == "__main__":
    main()

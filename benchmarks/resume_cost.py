"""What exact resume costs: checkpoint size and write time, and the time an interruption loses.

Checkpoints: a full search checkpoint (weights, alphas, betas, SGD and Adam state after one step, RNGs,
a history as long as the preset's epochs) of the ``smoke`` and ``paper-denoise`` supernets, written
the way a run writes it (serialise, temporary file, fsync, rename). Time lost: a ``smoke`` search run
through the command line uninterrupted, and again stopped by SIGTERM half-way and resumed; the
difference is the cost of one interruption (a second process start, data loading, the restore). With
``HINAS_DATA_ROOT`` holding BSD500, also what a resumed paper-denoise search redoes before its first step.

    python benchmarks/resume_cost.py            (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hinas.data.images import data_root, in_memory, load_images
from hinas.engine.checkpoint import Checkpointer, load_state, read_checkpoint
from hinas.engine.rundir import CHECKPOINT, RunDir
from hinas.engine.settings import SearchConfig, resolve
from hinas.jobs.search import SearchProgress, data_split
from hinas.nas.supernet import Supernet


def checkpoint_cost(preset: str, repeats: int) -> dict:
    cfg = resolve(SearchConfig, preset)
    model = Supernet(cfg.space)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)
    for opt in (a_opt, w_opt):  # one step each, so both optimisers hold their full state
        opt.zero_grad()
        model(torch.rand(1, cfg.space.in_channels, 16 * cfg.space.scale, 16 * cfg.space.scale)).mean().backward()
        opt.step()
    genotype = model.genotype()
    record = {"epoch": 1, "alpha": model.alpha_probs().tolist(), "beta": model.beta_probs().tolist(),
              "cells": genotype.to_dict()["cells"], "path": list(genotype.path), "val_psnr": 30.0, "score": 1.1}
    state = SearchProgress(history=[dict(record, epoch=e) for e in range(1, cfg.epochs + 1)])
    optimizers = {"weights": w_opt, "arch": a_opt}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with tempfile.TemporaryDirectory() as folder:
        run = RunDir(Path(folder) / "run", cfg)
        ckpt = Checkpointer(run, "search", cfg, model, optimizers, scaler)
        writes, reads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            ckpt.save(state)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_state(SearchProgress, read_checkpoint(run / CHECKPOINT, "search"), model, optimizers, scaler, run / CHECKPOINT)
            reads.append(time.perf_counter() - start)
        size = (run / CHECKPOINT).stat().st_size
        run.close()
    return {"preset": preset, "supernet_params": sum(p.numel() for p in model.parameters()), "history_epochs": cfg.epochs,
            "bytes": size, "write_s": statistics.median(writes), "read_restore_s": statistics.median(reads)}


def cli(args: list[str], stop_after: float | None = None) -> tuple[float, int]:
    """Wall time and exit code of ``hinas ARGS``; with ``stop_after``, SIGTERM that many seconds after the first epoch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hinas", *args, "--quiet"], env=env, stdout=subprocess.DEVNULL)
    if stop_after is not None:
        log = Path(args[args.index("--out") + 1]) / "log.jsonl"
        while not (log.exists() and '"event": "epoch"' in log.read_text()):
            time.sleep(0.01)
        time.sleep(stop_after)
        proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    return time.perf_counter() - start, code


def interruption_cost(repeats: int) -> dict:
    settings = ["--preset", "smoke", "--set", "epochs=4", "--set", "patches_per_image=2"]
    plain, split = [], []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            seconds, code = cli(["search", *settings, "--out", f"{folder}/plain{i}"])
            assert code == 0
            plain.append(seconds)
            first, code = cli(["search", *settings, "--out", f"{folder}/split{i}"], stop_after=0.5)
            assert code == 128 + signal.SIGTERM, code
            second, code = cli(["search", "--resume", f"{folder}/split{i}"])
            assert code == 0
            split.append(first + second)
    return {"uninterrupted_s": statistics.median(plain), "interrupted_and_resumed_s": statistics.median(split),
            "lost_per_interruption_s": statistics.median(split) - statistics.median(plain)}


def paper_startup() -> dict | None:
    """What a resumed paper-denoise search redoes before its first step: decode the 300 images, build the supernet."""
    cfg = resolve(SearchConfig, "paper-denoise")
    if data_root() is None:
        return None
    start = time.perf_counter()
    images = load_images(cfg.data, None, channels=cfg.space.in_channels)
    weight, arch, val = data_split(cfg, images)
    in_memory(weight), in_memory(arch), in_memory(val, cfg.val_crop)
    decoded = time.perf_counter()
    Supernet(cfg.space)
    return {"images": len(images), "decode_s": decoded - start, "build_s": time.perf_counter() - decoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resume_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"checkpoints": [checkpoint_cost(p, args.repeats) for p in ("smoke", "paper-denoise")],
               "interruption": interruption_cost(args.repeats), "paper_denoise_startup": paper_startup()}
    for row in results["checkpoints"]:
        print(f"{row['preset']:>13}: {row['supernet_params']:>9,} weights, checkpoint {row['bytes'] / 1e6:.2f} MB, "
              f"write {row['write_s'] * 1e3:.0f} ms, read + restore {row['read_restore_s'] * 1e3:.0f} ms")
    cost = results["interruption"]
    print(f"smoke search: {cost['uninterrupted_s']:.1f} s uninterrupted, {cost['interrupted_and_resumed_s']:.1f} s stopped "
          f"and resumed: {cost['lost_per_interruption_s']:.1f} s lost per interruption")
    paper = results["paper_denoise_startup"]
    if paper:
        print(f"paper-denoise start-up: {paper['images']} images decoded in {paper['decode_s']:.1f} s, "
              f"supernet built in {paper['build_s']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

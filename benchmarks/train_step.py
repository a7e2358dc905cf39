"""Training steps in every precision and layout: the search step and the retraining step, eager and compiled.

For each configuration a fresh subprocess builds the model, takes warm-up steps (a compiled step's first
call compiles: its time is reported as "compile s") and then ``--steps`` timed ones; it reports the median
wall time, the process CPU time per step and the peak RSS. Speed-ups are ratios of CPU time (wall time varies
with whatever else the machine runs); the compiled form is added for the eager form with the least CPU time.
Rows are written to the JSON as they come, so a stopped run keeps what it measured. Configurations:

- search: the paper's denoising supernet (L=3, B=4, F=10, gray), batch 6 of 64x64: one architecture step
  (Adam on alphas and betas) and one weight step (SGD), as the search alternates them;
- retrain: the paper's retraining batch (24 of 64x64 gray) for three networks: conv3x3 on path [0,1,2]
  and sep3x3 on [0,0,0] at F=20 (B=4, L=3), and DnCNN-17;

each in float32 / bf16 autocast x NCHW / channels_last, eager, plus the compiled form of the best eager
one. ``--base DIR`` adds the rows of another checkout (e.g. ``git worktree add /tmp/base HEAD~1``) in the
same run, in the form that checkout's engine uses by default, interleaved with this checkout's rows, so the
speed-up is a same-run ratio. Prints a table and writes benchmarks/results/train_step.json.

    python benchmarks/train_step.py [--base DIR] [--steps 3] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
NETS = {"conv3x3 [0,1,2]": ("conv_3x3", (0, 1, 2)), "sep3x3 [0,0,0]": ("sep_conv_3x3", (0, 0, 0)), "DnCNN-17": None}


def _imports() -> dict[str, Any]:
    """The public pieces the step needs, from the new layout or the flat one before it (for ``--base``)."""
    try:
        from hinas.engine.losses import restoration_loss
        from hinas.nas.baselines import DnCNN
        from hinas.nas.genotype import Genotype
        from hinas.nas.network import Network
        from hinas.nas.space import preset
        from hinas.nas.supernet import Supernet
    except ImportError:
        from hinas.baselines import DnCNN
        from hinas.genotype import Genotype
        from hinas.losses import restoration_loss
        from hinas.network import Network
        from hinas.space import preset
        from hinas.supernet import Supernet
    return {"loss": restoration_loss, "DnCNN": DnCNN, "Genotype": Genotype, "Network": Network, "preset": preset,
            "Supernet": Supernet}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up and time one configuration in this process."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    api = _imports()
    amp = torch.bfloat16 if spec["precision"] == "bf16" else None
    layout = torch.channels_last if spec["layout"] == "channels_last" else torch.contiguous_format

    def forward_loss(model, x, y, scale=1.0):
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            pred = model(x.to(memory_format=layout))
        return api["loss"](pred.float(), y, "mse", 0.5, scale)

    if spec["phase"] == "search":
        space = api["preset"]("paper-denoise")
        model = api["Supernet"](space).to(memory_format=layout)
        weights, arch = model.weight_parameters(), model.arch_parameters()
        w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(arch, lr=1e-3, weight_decay=1e-3)
        batches = [(torch.rand(6, 1, 64, 64), torch.rand(6, 1, 64, 64)) for _ in range(2)]

        def step():
            for opt, (x, y) in ((a_opt, batches[0]), (w_opt, batches[1])):
                opt.zero_grad(set_to_none=True)
                forward_loss(model, x, y, 0.5).backward()
                opt.step()
    else:
        if NETS[spec["net"]] is None:
            model = api["DnCNN"](1)
        else:
            op, path = NETS[spec["net"]]
            space = api["preset"]("paper-denoise")
            cell = tuple(((op, 0), (op, 1)) for _ in range(space.nodes))
            model = api["Network"](api["Genotype"](space, path, (cell,) * space.layers), 20)
        model = model.to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)
        x, y = torch.rand(24, 1, 64, 64), torch.rand(24, 1, 64, 64)

        def step():
            opt.zero_grad(set_to_none=True)
            forward_loss(model, x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()

    compile_s = compile_cpu_s = 0.0
    if spec["compiled"]:
        step = torch.compile(step)
        start, start_cpu = time.perf_counter(), _cpu_time()
        step()
        compile_s, compile_cpu_s = time.perf_counter() - start, _cpu_time() - start_cpu
    step()
    walls, cpus = [], []
    for _ in range(spec["steps"]):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"s_per_step": statistics.median(walls), "cpu_s": statistics.median(cpus), "compile_s": compile_s,
            "compile_cpu_s": compile_cpu_s, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _cpu_time() -> float:
    """CPU seconds of this process and its finished children (inductor compiles in worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(spec: dict[str, Any], checkout: Path, timeout: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"over {timeout:.0f} s"}
    if done.returncode:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return {**spec, **json.loads(done.stdout.strip().splitlines()[-1])}


def configurations(steps: int, threads: int, quick: bool) -> list[dict[str, Any]]:
    """Eager rows for every (phase/net, precision, layout); compiled rows are added for the best eager one."""
    targets = [("search", "supernet paper-denoise b6")] + [("retrain", n) for n in NETS]
    if quick:
        targets = targets[:1] + [("retrain", "sep3x3 [0,0,0]"), ("retrain", "DnCNN-17")]
    return [{"phase": phase, "net": net, "precision": p, "layout": lay, "compiled": False, "steps": steps, "threads": threads}
            for phase, net in targets for p in ("float32", "bf16") for lay in ("nchw", "channels_last")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="another checkout whose default rows run in the same run")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer networks and no compiled rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows: list[dict[str, Any]] = []
    meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "steps": args.steps}

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(_line(row), flush=True)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "train_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")

    for spec in configurations(args.steps, args.threads, args.quick):
        if args.base and spec["precision"] == "float32" and spec["layout"] == "nchw":  # the previous engine's CPU default
            add({**run(spec, args.base), "checkout": "base"})
        add({**run(spec, ROOT), "checkout": "this"})
    if not args.quick:
        for phase, net in dict.fromkeys((r["phase"], r["net"]) for r in rows):
            mine = [r for r in rows if (r["phase"], r["net"], r["checkout"]) == (phase, net, "this") and "error" not in r]
            best = min(mine, key=lambda r: r["cpu_s"])  # CPU time: wall time varies with the machine's other load
            spec = {k: best[k] for k in ("phase", "net", "precision", "layout", "steps", "threads")}
            add({**run({**spec, "compiled": True}, ROOT), "checkout": "this"})
    _table(rows)


def _line(r: dict[str, Any]) -> str:
    form = f"{r['precision']:7s} {r['layout']:13s} {'compiled' if r['compiled'] else 'eager':8s}"
    if "error" in r:
        return f"{r['checkout']:4s} {r['net']:26s} {form} error: {r['error']}"
    return (f"{r['checkout']:4s} {r['net']:26s} {form} {r['s_per_step']:7.3f} s {r['cpu_s']:7.3f} cpu-s "
            f"{r['compile_s']:6.1f} compile-s {r['peak_gb']:5.2f} GB")


def _table(rows: list[dict[str, Any]]) -> None:
    """Per network: each row's speed-up over the base checkout's row (or this checkout's float32 NCHW eager)."""
    print(f"\n{'network':26s} {'form':32s} {'s/step':>8s} {'cpu-s':>8s} {'cpu speed-up':>12s} {'compile s':>9s} {'peak GB':>8s}")
    for net in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == net]
        ref = next((r for r in mine if r["checkout"] == "base" and "error" not in r), None) or next(
            r for r in mine if (r["precision"], r["layout"], r["compiled"]) == ("float32", "nchw", False) and "error" not in r)
        for r in mine:
            if "error" in r:
                continue
            form = f"{r['checkout']} {r['precision']} {r['layout']} {'compiled' if r['compiled'] else 'eager'}"
            print(f"{net:26s} {form:32s} {r['s_per_step']:8.3f} {r['cpu_s']:8.3f} {ref['cpu_s'] / r['cpu_s']:11.2f}x "
                  f"{r['compile_s']:9.1f} {r['peak_gb']:8.2f}")


if __name__ == "__main__":
    main()

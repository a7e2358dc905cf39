"""Search-supernet training step: reference cell against fused cell (and fused + cell checkpointing).

One step is what the search's weight update costs: forward, backward and an SGD update of the
supernet weights on one batch. For every configuration a fresh subprocess builds the supernet, runs
one warm-up step and then ``--steps`` timed ones, and reports the median wall time and its peak
memory (CPU: the child's peak RSS, which includes Python and torch, about 0.3 GB; CUDA:
torch.cuda.max_memory_allocated). Configurations:

- the paper's denoising space (L=3, B=4, F=10, gray, 64x64 patches) at batch 2, 6 and 12 and its SR
  space (L=2, B=3, F=8, RGB, x4, 64x64 low-resolution patches, docs/HINAS.md) at batch 8 and 24, each with
  impl reference, fused and fused + checkpoint_cells;
- the paper's memory ablation on the denoising space at batch 6 (fused): cell_eval shared vs
  per_transition, alpha sharing lwas / tied / independent (table and bar chart).

GFLOP per step is nominal: 3 x the reference supernet's forward convolution FLOPs (hinas.nas.complexity;
backward ~ 2 x forward), the same for every impl, so GFLOP/s compares useful work. It is set against
the rate of one dense 64-channel 3x3 convolution (forward + backward, batch 6, 64x64) measured in the
same run. ``--profile`` (CPU) adds a per-op-type table of one fused step (time share, GFLOP, GFLOP/s); its GFLOP
are the ones executed (block-diagonal 1x1 zeros and the recomputed depthwise->pointwise pairs included).
On a loaded machine compare the "CPU s" column (process time), not the wall-clock s/step.

    python benchmarks/supernet.py [--device cuda] [--threads 2] [--steps 2] [--quick] [--profile]

The full CPU run takes about 7 minutes on a quiet 2-core machine at 2 threads (2 timed steps; estimated
from 1-thread CPU times: about 11 minutes at one thread) and needs about 13 GB of free memory (the
reference supernet on SR batch 24); --quick (1 timed step, denoising batch 6 and SR batch 8 only,
ablation at batch 2) about 3 minutes and 6 GB.
Prints the tables and writes benchmarks/results/supernet_<device>.json and
benchmarks/results/supernet_ablation_<device>.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hinas.hardware import amp_dtype, autocast, memory_layout, prepare_device
from hinas.nas.complexity import count_flops
from hinas.nas.space import SearchSpace, preset
from hinas.nas.supernet import Supernet

RESULTS = Path(__file__).parent / "results"
PATCH = 64
"""Training patch side of both paper protocols (for SR the low-resolution side)."""
IMPLS = {"reference": ("reference", False), "fused": ("fused", False), "fused+checkpoint": ("fused", True)}
SHARING, CELL_EVAL = ("lwas", "tied", "independent"), ("shared", "per_transition")
NAME_WIDTH = 60


def space_of(spec: dict[str, Any]) -> SearchSpace:
    return preset(spec["space"]).replace(sharing=spec.get("sharing", "lwas"), cell_eval=spec.get("cell_eval", "shared"))


def batch_of(space: SearchSpace, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input and target patches; SR targets are ``scale`` times larger."""
    hr = PATCH * space.scale
    return (torch.rand(batch, space.in_channels, PATCH, PATCH, device=device),
            torch.rand(batch, space.in_channels, hr, hr, device=device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec``'s training steps in this (fresh) process; its peak memory is the configuration's alone."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    impl, checkpoint = IMPLS[spec["impl"]]
    space = space_of(spec)
    amp, layout = amp_dtype(device, "auto", "search"), memory_layout(device, "search")  # as the search sets its step up
    prepare_device(device)
    net = Supernet(space, impl=impl, checkpoint=checkpoint).to(device).to(memory_format=layout)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x, y = batch_of(space, spec["batch"], device)
    x = x.contiguous(memory_format=layout)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            pred = net(x)
        F.l1_loss(pred.float(), y).backward()
        opt.step()

    for _ in range(3 if device.type == "cuda" else 1):  # cuDNN autotuning and the caching allocator settle on CUDA
        step()
    walls, cpus = [], []
    for _ in range(spec["steps"]):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    result = {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus), "peak_gb": peak / 1e9}
    if spec.get("profile"):
        result["profile"] = profile_step(step)
    return result


def in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """``run_child(spec)`` in a fresh interpreter (so peak RSS covers this configuration only)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"configuration {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))


@functools.cache
def step_gflop(space: SearchSpace, batch: int) -> float:
    """Nominal GFLOP of one training step: 3 x the reference supernet's forward convolution FLOPs."""
    return 3 * count_flops(Supernet(space, impl="reference"), (batch, space.in_channels, PATCH, PATCH)) / 1e9


def dense_conv_rate(device: torch.device, repeats: int = 5) -> float:
    """GFLOP/s of a dense 64-channel 3x3 convolution, forward + backward (input and weight), batch 6 of 64x64."""
    x = torch.rand(6, 64, PATCH, PATCH, device=device, requires_grad=True)
    w = torch.rand(64, 64, 3, 3, device=device, requires_grad=True)
    g = torch.rand(6, 64, PATCH, PATCH, device=device)
    flop = 3 * 2 * 6 * 64 * PATCH * PATCH * 64 * 9
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        F.conv2d(x, w, padding=1).backward(g)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return flop / statistics.median(times[1:]) / 1e9


# --- per-op-type profile -------------------------------------------------------------------------


def _conv_kind(weight: list[int]) -> str:
    k = f"{weight[2]}x{weight[3]}"
    return f"depthwise {k}" if weight[1] == 1 else ("pointwise 1x1" if k == "1x1" else f"dense {k}")


def _conv_flop(x: list[int], weight: list[int]) -> int:
    """Forward FLOPs (2 x MACs) of a convolution that keeps the spatial size (every one in the supernet cells does)."""
    n, _, h, w = x
    return 2 * n * weight[0] * h * w * weight[1] * weight[2] * weight[3]


def profile_step(step: Any) -> list[dict[str, Any]]:
    """One step under torch.profiler, grouped by op type: seconds, share of the step, GFLOP and GFLOP/s.

    Convolutions are grouped by kind (dense k x k, depthwise, pointwise) and direction; their FLOPs come
    from the recorded shapes (backward = 2 x forward: input and weight gradients). BatchNorm and the
    element-wise ops are memory-bound and carry no FLOP figure.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # name -> [seconds, GFLOP]
    everything = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        everything += e.self_cpu_time_total / 1e6
        if e.key == "aten::convolution" and len(e.input_shapes) > 1 and len(e.input_shapes[1]) == 4:
            name, flop = f"{_conv_kind(e.input_shapes[1])} forward", _conv_flop(e.input_shapes[0], e.input_shapes[1])
            seconds = e.cpu_time_total / 1e6
        elif e.key == "aten::convolution_backward":
            name, flop = f"{_conv_kind(e.input_shapes[2])} backward", 2 * _conv_flop(e.input_shapes[1], e.input_shapes[2])
            seconds = e.cpu_time_total / 1e6
        elif e.key in ("aten::native_batch_norm", "aten::native_batch_norm_backward"):
            name, flop, seconds = "batch norm " + ("backward" if "backward" in e.key else "forward"), 0, e.cpu_time_total / 1e6
        else:
            continue
        groups[name][0] += seconds
        groups[name][1] += flop * e.count / 1e9
    covered = sum(s for s, _ in groups.values())
    groups["everything else (element-wise, copies, autograd, optimizer)"] = [max(everything - covered, 0.0), 0.0]
    rows = [{"op": name, "seconds": s, "share": s / everything, "gflop": g, "gflops_per_s": g / s if g else None}
            for name, (s, g) in groups.items()]
    return sorted(rows, key=lambda r: -r["seconds"])


# --- tables and chart ----------------------------------------------------------------------------


def configurations(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(impl comparison, ablation) specs without the run-wide fields."""
    batches = {"paper-denoise": (6,) if quick else (2, 6, 12), "paper-sr": (8,) if quick else (8, 24)}
    compare = [{"space": s, "batch": b, "impl": i} for s, bs in batches.items() for b in bs for i in IMPLS]
    ablation = [{"space": "paper-denoise", "batch": 2 if quick else 6, "impl": "fused", "sharing": sh, "cell_eval": ce}
                for ce in CELL_EVAL for sh in SHARING]
    return compare, ablation


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{head:>{len(head) if i else NAME_WIDTH}}" for i, (head, _, _) in enumerate(columns)))
    for row in rows:
        cells = []
        for i, (head, key, fmt) in enumerate(columns):
            value = row.get(key)
            text = "-" if value is None else format(value, fmt)
            cells.append(f"{text:>{len(head) if i else NAME_WIDTH}}")
        print("  ".join(cells))


def bar_chart(rows: list[dict[str, Any]], path: Path, memory_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (key, label) in zip(axes, [("seconds", "seconds per step"), ("peak_gb", memory_label)]):
        for offset, cell_eval in zip((-0.2, 0.2), CELL_EVAL):
            values = [next(r[key] for r in rows if r["sharing"] == s and r["cell_eval"] == cell_eval) for s in SHARING]
            ax.bar([i + offset for i in range(len(SHARING))], values, width=0.4, label=f"cell_eval={cell_eval}")
        ax.set_xticks(range(len(SHARING)), SHARING)
        ax.set_ylabel(label)
        ax.set_xlabel("alpha sharing")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fused supernet, paper denoising space, batch {rows[0]['batch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2, the target machine's cores)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration after one warm-up (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 timed step, fewer batch sizes, ablation at batch 2")
    parser.add_argument("--profile", action="store_true",
                        help="CPU only: add a per-op-type profile of one fused denoising step (batch 6)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    device = torch.device(args.device)
    if args.profile and device.type != "cpu":
        parser.error("--profile times CPU kernels; run it with --device cpu")
    torch.set_num_threads(args.threads)
    steps = 1 if args.quick else args.steps
    common = {"device": args.device, "threads": args.threads, "steps": steps}
    load_before = os.getloadavg()
    dense = dense_conv_rate(device)
    compare, ablation = configurations(args.quick)
    results: dict[str, list[dict[str, Any]]] = {"compare": [], "ablation": []}
    for part, specs in (("compare", compare), ("ablation", ablation)):
        for spec in specs:
            measured = in_child({**common, **spec})
            gflop = step_gflop(space_of(spec), spec["batch"])
            row = {**spec, **measured, "gflop": gflop, "gflops_per_s": gflop / measured["seconds"]}
            row["dense_ratio"] = row["gflops_per_s"] / dense
            results[part].append(row)
            print(f"  {part}: {spec} {measured['seconds']:.2f} s, {measured['peak_gb']:.2f} GB", flush=True)
    memory = "peak RSS GB" if device.type == "cpu" else "max allocated GB"
    columns = [("configuration", "name", "s"), ("s/step", "seconds", ".2f"), ("CPU s", "cpu_seconds", ".2f"),
               ("GFLOP", "gflop", ".1f"), ("GFLOP/s", "gflops_per_s", ".1f"), ("/dense", "dense_ratio", ".2f"),
               (memory, "peak_gb", ".2f")]
    for row in results["compare"]:
        row["name"] = f"{row['space']} b{row['batch']} {row['impl']}"
    for row in results["ablation"]:
        row["name"] = f"{row['cell_eval']} {row['sharing']} b{row['batch']}"
    print(f"\ndense 64-channel 3x3 conv, forward+backward: {dense:.1f} GFLOP/s ({args.threads} threads, {device})")
    print_table("reference vs fused supernet, one weight step", results["compare"], columns)
    print_table("memory ablation (fused, paper denoising space)", results["ablation"], columns)
    profile = None
    if args.profile:
        profile = in_child({**common, "space": "paper-denoise", "batch": 6, "impl": "fused", "profile": True})["profile"]
        print_table("where a fused denoising step (batch 6) goes (torch.profiler, CPU time)", profile,
                    [("op type", "op", "s"), ("seconds", "seconds", ".2f"), ("share", "share", ".1%"),
                     ("GFLOP", "gflop", ".1f"), ("GFLOP/s", "gflops_per_s", ".1f")])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"supernet_{device.type}.json"
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads, "device": args.device,
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "load_average_before_after": [load_before, os.getloadavg()], "quick": args.quick, "steps": steps,
        "gflop_note": "nominal: 3 x the reference supernet's forward convolution FLOPs, the same for every impl",
        "dense_conv3x3_64ch_gflops_per_s": dense, **results, "profile": profile,
    }, indent=2) + "\n")
    chart = RESULTS / f"supernet_ablation_{device.type}.png"
    bar_chart(results["ablation"], chart, memory)
    print(f"\nwrote {out} and {chart}")


if __name__ == "__main__":
    main()

"""How well the latency table predicts the measured latency of derived networks (issue 15, item 3).

For 20 random genotypes of the paper's denoising space (``random_genotype(space, seed)``, seeds 0-19; the table's
calibration networks use seeds from 10000 on, so none of these was fitted), the three uniform networks of the
authors' parameter counts (every node reads (s1, s0) through one op), and any genotype files given: the
predicted latency of the derived network at F=20 (:func:`hinas.nas.latency.network_latency`) against its
latency measured in the inference form (:class:`hinas.infer.backends.InferenceModel`, eager PyTorch), on a
``size`` x ``size`` gray image, batch 1. Networks are timed interleaved, round after round, and each one's
latency is its fastest round, on the clock the table is measured with (:func:`hinas.infer.latency_table.clock`:
with one thread, the thread's CPU time, which other load on a shared machine does not inflate); the fastest
wall-clock round is reported beside it, with the load average.

    python benchmarks/latency_accuracy.py [--threads 1] [--size 256] [--rounds 5] [--table FILE] [--genotype FILE ...]

The table is re-used from ``--table`` when it holds on this machine, else measured there (``hinas profile``).
Prints the table of predicted, measured and error per network and the distribution of absolute errors
(median, p90, max), and writes benchmarks/results/latency_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from hinas.hardware import keep_freed_memory
from hinas.infer.backends import InferenceModel
from hinas.infer.latency_table import clock, load_or_measure
from hinas.nas.genotype import Genotype, random_genotype
from hinas.nas.latency import network_latency
from hinas.nas.network import Network
from hinas.nas.space import preset

RESULTS = Path(__file__).parent / "results"
UNIFORM = [("conv_3x3", (0, 1, 2)), ("sep_conv_3x3", (0, 0, 0)), ("dil_conv_5x5", (1, 2, 2))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--filters", type=int, default=20)
    parser.add_argument("--random", type=int, default=20, help="random genotypes (seeds 0..N-1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--table", default=str(RESULTS / "latency_table_cpu.json"))
    parser.add_argument("--genotype", action="append", default=[], help="searched genotype file (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    space = preset("paper-denoise")
    started = time.time()
    table = load_or_measure(args.table, space, args.filters, args.size, log=print)
    nets: list[tuple[str, Genotype]] = [(f"random s{s}", random_genotype(space, s)) for s in range(args.random)]
    nets += [(f"uniform {op} {list(path)}",
              Genotype(space, path, (tuple(((op, 0), (op, 1)) for _ in range(space.nodes)),) * space.layers))
             for op, path in UNIFORM]
    nets += [(Path(f).stem, Genotype.load(f)) for f in args.genotype]
    torch.manual_seed(0)
    x = torch.rand(1, space.in_channels, args.size, args.size)
    models = [InferenceModel(Network(g, args.filters).eval()) for _, g in nets]
    name, now = clock(x.device)
    times: list[list[float]] = [[] for _ in nets]
    walls: list[list[float]] = [[] for _ in nets]
    loads = [os.getloadavg()[0]]
    for m in models:  # warm-up
        m(x)
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            t0, w0 = now(), time.perf_counter()
            m(x)
            times[i].append(1e3 * (now() - t0))
            walls[i].append(1e3 * (time.perf_counter() - w0))
        loads.append(os.getloadavg()[0])
    rows = []
    print(f"measured: fastest of {args.rounds} rounds on clock {name}; wall: fastest wall-clock round")
    print(f"{'network':<34} {'predicted ms':>12} {'measured ms':>12} {'error':>8} {'wall ms':>9}")
    for (label, g), ts, ws in zip(nets, times, walls):
        pred, meas = network_latency(table, g), min(ts)
        err = 100 * (pred / meas - 1)
        rows.append({"network": label, "path": list(g.path), "predicted_ms": round(pred, 2), "measured_ms": round(meas, 2),
                     "error_pct": round(err, 2), "wall_ms": round(min(ws), 2),
                     "measured_median_ms": round(statistics.median(ts), 2)})
        print(f"{label:<34} {pred:12.1f} {meas:12.1f} {err:+7.1f}% {min(ws):9.1f}")
    summary = {}
    for group, members in (("random", [r for r in rows if r["network"].startswith("random")]), ("all", rows)):
        errs = [abs(r["error_pct"]) for r in members]
        summary[group] = {"networks": len(errs), "median_abs_error_pct": round(statistics.median(errs), 2),
                          "p90_abs_error_pct": round(percentile(errs, 0.9), 2), "max_abs_error_pct": round(max(errs), 2),
                          "within_15pct": sum(e <= 15 for e in errs)}
        print(f"{group}: |error| median {summary[group]['median_abs_error_pct']:.1f}%, p90 "
              f"{summary[group]['p90_abs_error_pct']:.1f}%, max {summary[group]['max_abs_error_pct']:.1f}%; "
              f"{summary[group]['within_15pct']}/{len(errs)} within 15%")
    out = {"env": table.env, "calibration": table.calibration, "rounds": args.rounds, "statistic": f"fastest round, clock {name}",
           "load_average": [round(v, 2) for v in loads], "seconds": round(time.time() - started, 1),
           "table": args.table, "summary": summary, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency_accuracy.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; written {RESULTS / 'latency_accuracy.json'}")


if __name__ == "__main__":
    main()

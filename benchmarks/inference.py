"""Inference speed of derived HiNAS networks, training form against inference form, beside DnCNN-17.

Part 1 re-measures the speed table of the task (512x512 gray, batch 1): DnCNN-17 in plain PyTorch in every
form that may be its best (float32 / bf16 x NCHW / channels_last x eager / torch.compile; bf16 where the CPU
has it natively) and the three denoisers built as the authors build them (every edge one op, inputs (s1, s0)),
each in its training form (eval mode, as built) and its inference form (``hinas.infer.fast``: eager PyTorch in
float32 and bf16, ONNX Runtime and torch.compile), all in the same run, with parameters, nominal GFLOP (the
training form's convolutions, 2 x MACs), the achieved GFLOP/s (nominal GFLOP / latency), the CPU time and each
row's speed-up over DnCNN-17's fastest form. Rows are timed interleaved, round after round, and medians are
reported, because the test machine is shared. On the CPU the run also measures the machine's dense
peak (a large matrix product, bf16 where the CPU has it), to show how close DnCNN-17 already runs to it,
and times each part of the inference forms (stem, cells, decoder, ...) with the FLOPs it executes. Part 2: latency and peak
tensor memory of the inference form at 256, 512 and 1024 pixels (gray and colour denoisers; SR at x2 and x4
output sizes; 1024 for a subset). On CUDA (``--device cuda``) part 1 is run at batch 1 and at a throughput
batch.

    python benchmarks/inference.py [--device cuda] [--repeats 3] [--no-compile] [--quick] [--threads N]

``--quick``: part 1 only, with only the rows that can be a network's best form (no training form, ONNX
Runtime, float32 compiled or memory profiling), and the targets: each HiNAS network's best form against
DnCNN-17's best form.

Prints the tables and writes benchmarks/results/inference_<device>.json. Peak memory is the largest sum of
live tensors recorded by the PyTorch profiler on CPU (torch.cuda.max_memory_allocated on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hinas.hardware import cpu_has_bf16, keep_freed_memory
from hinas.infer.backends import InferenceModel
from hinas.infer.kernels import FusedConv, fold_sequential
from hinas.infer.latency_table import Converted
from hinas.nas.baselines import DnCNN
from hinas.nas.complexity import count_flops, count_params
from hinas.nas.genotype import Genotype
from hinas.nas.network import Network
from hinas.nas.space import SearchSpace, preset

TABLE = [  # (name, op on every edge, width path): the denoisers of the task's speed table, gray, F=20, B=4, L=3
    ("HiNAS conv3x3 [0,1,2]", "conv_3x3", (0, 1, 2)),
    ("HiNAS sep3x3 [0,0,0]", "sep_conv_3x3", (0, 0, 0)),
    ("HiNAS dil5x5 [1,2,2]", "dil_conv_5x5", (1, 2, 2)),
]
DENOISE, SR = preset("paper-denoise"), preset("paper-sr")


def uniform(space: SearchSpace, op: str, path: tuple[int, ...]) -> Genotype:
    """Every node reads (s1, s0) through ``op``, as in the authors' parameter counts (tests/test_network.py)."""
    return Genotype(space, path, (tuple(((op, 0), (op, 1)) for _ in range(space.nodes)),) * space.layers)


def trained_like(net: nn.Module, channels: int) -> nn.Module:
    """Non-trivial BatchNorm statistics (a few training-mode passes), as after training; then eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(2, channels, 32, 32))
    return net.eval()


class Folded(nn.Module):
    """DnCNN-17 with the inference form's folding (BN into conv, in-place ReLU) and, on the CPU, its kernels
    (Winograd 3x3, the one-output head as shifted taps), for reference: what the same treatment gives DnCNN."""

    def __init__(self, dncnn: DnCNN) -> None:
        super().__init__()
        self.body = fold_sequential(dncnn.body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return x - self.body(x)


def executed_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs + bias) of the convolutions an inference form actually runs, e.g. more after composing.

    Every FusedConv of the inference form runs once per image, at the image's size (stride 1, no upscaling
    before the pixel shuffle), so its count is its weight's MACs per pixel times the pixels.
    """
    n, _, h, w = shape
    return sum(n * h * w * m.weight.shape[0] * (2 * m.weight[0].numel() + 1) for m in model.modules() if isinstance(m, FusedConv))


def flops_at(net: nn.Module, channels: int, size: tuple[int, int]) -> int:
    """Convolution FLOPs scale exactly with the pixel count (stride 1, same padding): count at 64x64 and scale."""
    return count_flops(net, (1, channels, 64, 64)) * size[0] * size[1] // (64 * 64)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes: the largest sum of live tensors while ``fn`` runs (allocations the PyTorch profiler records on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines, which bypass Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


OTHER_RUNTIME = ("(onnxruntime)", "(torch.compile)")
"""Rows whose memory the PyTorch profiler does not see (ONNX Runtime's) or would record compiling."""


def interleaved(rows: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                memory: bool) -> dict[str, dict[str, Any]]:
    """Median latency over ``repeats`` rounds, each running every row once; a first (warm-up) round measures memory,
    or the first call's time (``first_call_s``: with torch.compile, the compilation). ``cpu_s``: the median CPU time
    of the process's threads: waiting for cores other processes hold does not inflate it (OpenMP's spin-waiting does)."""
    result: dict[str, dict[str, Any]] = {name: {"times": []} for name in rows}
    for name, fn in rows.items():
        if memory and not name.endswith(OTHER_RUNTIME):
            result[name]["peak_mb"] = peak_memory(fn, device) / 2**20
        else:
            result[name]["first_call_s"] = timed(fn, device)
            result[name]["peak_mb"] = None
    for _ in range(repeats):
        for name, fn in rows.items():
            cpu = time.process_time()
            result[name]["times"].append(timed(fn, device))
            result[name].setdefault("cpu_times", []).append(time.process_time() - cpu)
    for r in result.values():
        r["latency_s"], r["cpu_s"] = statistics.median(r["times"]), statistics.median(r["cpu_times"])
    return result


def speed_table(device: torch.device, repeats: int, batch: int, compile: bool, quick: bool = False) -> list[dict[str, Any]]:
    size = (512, 512)
    x = torch.rand(batch, 1, *size, device=device)
    models: dict[str, tuple[nn.Module, nn.Module]] = {}  # row -> (module, training form for counting)
    dncnn = trained_like(DnCNN(), 1).to(device)
    bf16 = cpu_has_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    precisions = {"float32": torch.float32, **({"bf16": torch.bfloat16} if bf16 else {})}
    layouts = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
    best_guess = ("bf16" if bf16 else "float32", "channels_last")  # the one form compiled in a quick run
    for (p, dtype), (lay, layout) in itertools.product(precisions.items(), layouts.items()):
        models[f"DnCNN-17 {p} {lay}"] = (Converted(dncnn, dtype, layout), dncnn)
        if compile and (not quick or (p, lay) == best_guess):
            models[f"DnCNN-17 {p} {lay} (torch.compile)"] = (torch.compile(Converted(dncnn, dtype, layout)), dncnn)
    if device.type == "cpu" and not quick:
        models["DnCNN-17 folded, same kernels (reference)"] = (Folded(dncnn), dncnn)
    for name, op, path in TABLE:
        net = trained_like(Network(uniform(DENOISE, op, path), 20), 1).to(device)
        if not quick:
            models[f"{name} training form"] = (net, net)
        for p in precisions:
            suffix = "" if p == "float32" else f" {p}"
            models[f"{name} inference form{suffix}"] = (InferenceModel(net, precision=p), net)
            if compile and (not quick or p == best_guess[0]):
                models[f"{name} inference form{suffix} (torch.compile)"] = (InferenceModel(net, "compile", precision=p), net)
        if op.startswith("sep") and not quick:
            models[f"{name} inference form, separable as dense"] = (InferenceModel(net, separable="dense"), net)
        if device.type == "cpu" and not quick:
            models[f"{name} inference form (onnxruntime)"] = (InferenceModel(net, "onnxruntime"), net)

    def call(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m(x)
        return run

    measured = interleaved({name: call(m) for name, (m, _) in models.items()}, device, repeats, memory=not quick)
    rows = []
    for name, (m, train) in models.items():
        gflop = batch * flops_at(train, 1, size) / 1e9
        r = measured[name]
        executed = executed_flops(m.fast, (batch, 1, *size)) / 1e9 if isinstance(m, InferenceModel) else None
        rows.append({"network": name, "params": count_params(train), "gflop": gflop, "executed_gflop": executed,
                     "latency_s": r["latency_s"], "times_s": r["times"], "cpu_s": r["cpu_s"],
                     "gflops_per_s": gflop / r["latency_s"],
                     "peak_mb": r["peak_mb"], "first_call_s": r.get("first_call_s"), "batch": batch, "size": list(size)})
    return rows


def by_part(repeats: int) -> list[dict[str, Any]]:
    """Where the inference form's time goes (CPU, 512x512 gray; bf16 where the CPU has it): each top-level part of the
    network, timed by hooks over ``repeats`` passes, with the FLOPs its convolutions execute and so its arithmetic rate."""
    rows = []
    shape = (1, 1, 512, 512)
    x = torch.rand(shape)
    for name, op, path in TABLE:
        model = InferenceModel(trained_like(Network(uniform(DENOISE, op, path), 20), 1),
                               precision="bf16" if cpu_has_bf16() else "float32")
        parts = dict(model.fast.named_children())
        spent = dict.fromkeys(parts, 0.0)
        started: dict[str, float] = {}

        def start(part: str, started: dict[str, float] = started) -> None:
            started[part] = time.perf_counter()

        def stop(part: str, spent: dict[str, float] = spent, started: dict[str, float] = started) -> None:
            spent[part] += time.perf_counter() - started[part]

        handles = []
        for part, module in parts.items():
            for m in module if isinstance(module, nn.ModuleList) else [module]:
                handles.append(m.register_forward_pre_hook(lambda *_, p=part: start(p)))
                handles.append(m.register_forward_hook(lambda *_, p=part: stop(p)))
        model(x)  # warm-up
        for part in parts:
            spent[part] = 0.0
        began = time.perf_counter()
        for _ in range(repeats):
            model(x)
        spent["whole"] = time.perf_counter() - began
        for h in handles:
            h.remove()
        for part, module in [*parts.items(), ("whole", model.fast)]:
            seconds, gflop = spent[part] / repeats, executed_flops(module, shape) / 1e9
            rows.append({"network": name, "part": part, "ms": seconds * 1e3, "gflop_run": gflop,
                         "gflops_per_s": gflop / seconds})
    return rows


def print_parts(rows: list[dict[str, Any]]) -> None:
    print(f"\ninference form by part, 512x512 gray, {'bf16' if cpu_has_bf16() else 'float32'} (GFLOP run / time)\n"
          "| network | part | ms | GFLOP run | GFLOP/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network'][6:]} | {r['part']} | {r['ms']:.0f} | {r['gflop_run']:.1f} | {r['gflops_per_s']:.0f} |")


SIZES = [  # (name, space, op, path, output sides; the inference form only; gray 512 comes from the speed table)
    ("gray sep3x3 [0,0,0]", DENOISE, "sep_conv_3x3", (0, 0, 0), (256, 1024)),
    ("gray conv3x3 [0,1,2]", DENOISE, "conv_3x3", (0, 1, 2), (256,)),
    ("gray dil5x5 [1,2,2]", DENOISE, "dil_conv_5x5", (1, 2, 2), (256,)),
    ("color sep3x3 [0,0,0]", DENOISE.replace(in_channels=3), "sep_conv_3x3", (0, 0, 0), (256, 512, 1024)),
    ("color conv3x3 [0,1,2]", DENOISE.replace(in_channels=3), "conv_3x3", (0, 1, 2), (256, 512)),
    ("SR x2 conv3x3 [1,2]", SR.replace(scale=2), "conv_3x3", (1, 2), (256, 512)),
    ("SR x4 sep3x3 [1,2]", SR.replace(scale=4), "sep_conv_3x3", (1, 2), (256, 512, 1024)),
]


def size_sweep(device: torch.device, repeats: int, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{"network": f"gray {r['network'][6:].replace(' inference form', '')}", "output": 512, "input": 512,
             "params": r["params"], "gflop": r["gflop"], "latency_s": r["latency_s"], "gflops_per_s": r["gflops_per_s"],
             "peak_mb": r["peak_mb"]} for r in table if r["network"].endswith("] inference form")]
    for name, space, op, path, sides in SIZES:
        filters = 20 if space.task == "denoise" else 16
        net = trained_like(Network(uniform(space, op, path), filters), space.in_channels).to(device)
        model = InferenceModel(net)
        for side in sides:
            lr = side // space.scale
            x = torch.rand(1, space.in_channels, lr, lr, device=device)

            def run(model: InferenceModel = model, x: torch.Tensor = x) -> Any:
                return model(x)

            r = interleaved({name: run}, device, repeats if side < 1024 else 1, memory=True)[name]
            gflop = flops_at(net, space.in_channels, (lr, lr)) / 1e9
            rows.append({"network": name, "output": side, "input": lr, "params": count_params(net), "gflop": gflop,
                         "latency_s": r["latency_s"], "gflops_per_s": gflop / r["latency_s"], "peak_mb": r["peak_mb"]})
            print(f"  {name:22} {side:5}: {r['latency_s']:7.3f} s", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """GFLOP is the network's nominal count (its training form), for every form; 'run' is what the form executes;
    'x DnCNN best': how many times faster than DnCNN-17's fastest form in this run, by latency and by CPU time."""
    dncnn = min(r["latency_s"] for r in rows if r["network"].startswith("DnCNN-17"))
    dncnn_cpu = min(r["cpu_s"] for r in rows if r["network"].startswith("DnCNN-17"))
    print(f"\n{title}\n| network | params | GFLOP | GFLOP run | latency (s) | x DnCNN best | CPU (s) | x DnCNN best, CPU | "
          "achieved GFLOP/s | peak MB | first call (s) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        run = f"{r['executed_gflop']:.0f}" if r["executed_gflop"] is not None else "="
        first = f"{r['first_call_s']:.0f}" if r["first_call_s"] is not None else "-"
        print(f"| {r['network']} | {r['params'] / 1e3:.0f} K | {r['gflop']:.0f} | {run} | {r['latency_s']:.2f} | "
              f"{dncnn / r['latency_s']:.2f} | {r['cpu_s']:.2f} | {dncnn_cpu / r['cpu_s']:.2f} | {r['gflops_per_s']:.0f} | "
              f"{peak} | {first} |")


def print_sizes(rows: list[dict[str, Any]]) -> None:
    print("\ninference form by output size, batch 1\n"
          "| network | output | input | params | GFLOP | latency (s) | GFLOP/s | peak MB |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["network"], r["output"])):
        print(f"| {r['network']} | {r['output']} | {r['input']} | {r['params'] / 1e3:.0f} K | {r['gflop']:.1f} | "
              f"{r['latency_s']:.3f} | {r['gflops_per_s']:.0f} | {r['peak_mb']:.0f} |")


def dense_peak(device: torch.device, n: int = 4096, repeats: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the BLAS on an n x n x n product in ``dtype``: the dense arithmetic rate this machine can reach."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats)) / 1e9


TARGETS = {"HiNAS sep3x3 [0,0,0]": 2.0, "HiNAS conv3x3 [0,1,2]": 1.5}
"""Issue 14: each network in its best form at least this many times faster than DnCNN-17 in its best form."""


def targets(rows: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """The task's CPU targets, checked on this run's figures: every network in its fastest form measured here (DnCNN-17's
    own best included); ``peak``: :func:`dense_peak`, for scale."""
    by = {r["network"]: r for r in rows}
    dncnn = min((r for n, r in by.items() if n.startswith("DnCNN-17")), key=lambda r: r["latency_s"])
    result = {"dense_peak_gflops_per_s": peak, "dncnn_best_form": dncnn["network"],
              "dncnn_latency_s": dncnn["latency_s"],
              "dncnn_gflops_per_s": dncnn["gflops_per_s"], "dncnn_share_of_peak": dncnn["gflops_per_s"] / peak}
    for name, _, _ in TABLE:
        fast = min((r for n, r in by.items() if n.startswith(name) and "inference form" in n), key=lambda r: r["latency_s"])
        speedup = dncnn["latency_s"] / fast["latency_s"]
        dncnn_cpu = min(r["cpu_s"] for n, r in by.items() if n.startswith("DnCNN-17"))
        fast_cpu = min(r["cpu_s"] for n, r in by.items() if n.startswith(name) and "inference form" in n)
        result[name] = {"best_form": fast["network"], "gflops_per_s": fast["gflops_per_s"], "latency_s": fast["latency_s"],
                        "speedup_vs_dncnn_best": speedup, "cpu_speedup_vs_dncnn_best": dncnn_cpu / fast_cpu,
                        "target": TARGETS.get(name),
                        # both measures: on a shared machine the latency alone can flatter either side
                        "meets_target": min(speedup, dncnn_cpu / fast_cpu) >= TARGETS[name] if name in TARGETS else None}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per row (default: %(default)s)")
    parser.add_argument("--throughput-batch", type=int, default=8,
                        help="batch of the CUDA throughput table (default: %(default)s)")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator as it is (see keep_freed_memory)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile rows (each compiles for a minute or so on two cores)")
    parser.add_argument("--threads", type=int, help="torch threads (on a shared machine 1 avoids OpenMP waiting at every "
                        "kernel for a thread another process holds, which penalises networks of many small kernels)")
    parser.add_argument("--quick", action="store_true", help="the best-form rows and the targets only (see above)")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/inference_<device>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    allocator = "glibc default" if args.system_malloc else ("glibc, freed memory kept" if keep_freed_memory() else "default")
    load = os.getloadavg()
    started = time.perf_counter()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, allocator: {allocator}, load average {load[0]:.1f}", flush=True)
    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "cpus": os.cpu_count(), "allocator": allocator, "python": sys.version.split()[0]}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["table"] = speed_table(device, args.repeats, 1, args.compile, args.quick)
        print_table(result["table"], "512x512 gray, batch 1")
        if not args.quick:
            result["throughput"] = speed_table(device, args.repeats, args.throughput_batch, args.compile)
            print_table(result["throughput"], f"512x512 gray, batch {args.throughput_batch}")
    else:
        result["table"] = speed_table(device, args.repeats, 1, args.compile, args.quick)
        print_table(result["table"], "512x512 gray, batch 1 (CPU)")
        dtype = torch.bfloat16 if cpu_has_bf16() else torch.float32
        peak = dense_peak(device, dtype=dtype)
        print(f"\ndense peak of this machine (4096^3 {dtype} matrix product): {peak:.0f} GFLOP/s")
        result["targets"] = {"dense_peak_dtype": str(dtype), **targets(result["table"], peak)}
        print("\ntargets:", json.dumps(result["targets"], indent=1))
        if not args.quick:
            result["parts"] = by_part(args.repeats)
            print_parts(result["parts"])
    if not args.quick:
        print("\ninference form by size:", flush=True)
        result["sizes"] = size_sweep(device, max(1, args.repeats - 1), result["table"])
        print_sizes(result["sizes"])
    result["quick"] = args.quick
    result["load_average"] = [load[0], os.getloadavg()[0]]
    result["wall_s"] = time.perf_counter() - started
    out = args.out or Path(f"benchmarks/results/inference_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwall {result['wall_s']:.0f} s, load average {load[0]:.1f} -> {result['load_average'][1]:.1f}; results: {out}")


if __name__ == "__main__":
    main()

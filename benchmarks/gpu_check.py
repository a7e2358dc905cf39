"""One check of hinas on a CUDA GPU, for a session lent one: every part the CPU test suite cannot reach.

Parts, each in its own process group with its own time limit, so one that fails or hangs is recorded
(status, error, log tail) and the rest still run; together they stay inside ``--budget`` seconds (480):

- environment: torch, CUDA device, and the Python packages hinas needs (graphviz is often missing);
- pipeline_{auto,fp16,off}: smoke search, retrain, evaluate and restore through the CLI at that ``amp``;
- fused_float64: the fused supernet against the reference one in float64 on the device, forward and
  backward (outputs, every gradient, running statistics) on both paper spaces, as tests/test_fused.py on CPU;
- paper_step_eager / _compiled / _cudagraphs: the paper's denoising search step (preset paper-denoise: batch 6,
  64x64, bf16 autocast, channels_last, data loading included) set up as ``hinas.engine.loop.fit`` does, on
  300 synthetic BSD-sized images, eager and under torch.compile (default and reduce-overhead, i.e. CUDA graphs:
  a step launches about 23,000 kernels); with the projection to the full
  100-epoch search (weight-only and arch+weight steps, 147 images x patches_per_image / batch steps per
  epoch, and one validation per epoch; the per-epoch checkpoint and genotype are left out);
- sync_warnings: host-device synchronisations in a few search steps (torch.cuda.set_sync_debug_mode("warn"));
- resume_sigterm: a smoke search (checkpoint_every=1) in a process of its own, SIGTERMed after its first step's
  checkpoint, then resumed to the end;
- bench_supernet / bench_inference: benchmarks/supernet.py --device cuda --quick and benchmarks/inference.py.

``--dry-run`` runs the same parts on the CPU with tiny sizes (tests/test_gpu_check.py, so this script cannot
rot): one pipeline, the smoke search space, torch.compile's eager backend, the benchmarks' flags checked only.

    bash benchmarks/gpu_check.sh [--dry-run] [--only part,part] [--budget 480]

Prints a table; writes $OUT/gpu_check.json when OUT is set (the device tool's result folder), else
benchmarks/results/gpu_check.json (or ``--json PATH``), every part's output beside it in gpu_check.log (one file:
the device tool brings back at most 8), and the benchmarks' own JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAPER_EPOCHS_NOTE = "paper: about 1 hour on a GTX 1080 Ti"


class CheckFailed(Exception):
    """A part ran but what it found is wrong."""


@dataclass
class Part:
    name: str
    limit: float
    """Seconds this part may run (less when the budget left is less)."""
    run: Callable[[Context], dict[str, Any]]
    dry: bool = True
    """Whether ``--dry-run`` runs it (else it is listed as skipped)."""


@dataclass
class Context:
    device: str
    dry: bool
    work: Path
    out_dir: Path


# --- helpers shared by the parts -------------------------------------------------------------------


def cli(*argv: Any) -> float:
    """``hinas ARGV`` in this process; its seconds. A non-zero exit is a failure (its message is in the part's log)."""
    from hinas.cli import main

    start = time.perf_counter()
    code = main([str(a) for a in argv])
    if code:
        raise CheckFailed(f"hinas {' '.join(map(str, argv[:1]))} exited {code}")
    return time.perf_counter() - start


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def finite(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckFailed(f"{what} is {value!r}, not a finite number")
    return float(value)


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def gray_pngs(folder: Path, count: int, height: int, width: int) -> Path:
    """``count`` random 8-bit gray PNGs; what they show does not matter to timings."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        smooth = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
        img = Image.fromarray(smooth).resize((width, height), Image.BILINEAR)  # compresses far faster than noise
        img.save(folder / f"{i:03d}.png", compress_level=1)
    return folder


# --- parts -----------------------------------------------------------------------------------------


def environment(ctx: Context) -> dict[str, Any]:
    import importlib.util

    import torch

    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise CheckFailed(f"torch {torch.__version__} sees no CUDA device")
    needed = ["numpy", "PIL", "skimage", "matplotlib", "graphviz", "tqdm", "yaml"]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device_name": torch.cuda.get_device_name() if ctx.device == "cuda" else platform.processor() or "cpu",
            "onnxruntime": importlib.util.find_spec("onnxruntime") is not None, "missing": missing}
    if missing:
        raise CheckFailed(f"missing Python packages: {', '.join(missing)} (carry their wheels: see gpu_check.sh)")
    info["summary"] = f"{info['device_name']}, torch {info['torch']}"
    return info


def pipeline(amp: str) -> Callable[[Context], dict[str, Any]]:
    def run(ctx: Context) -> dict[str, Any]:
        import torch

        from hinas.data.degrade import seeded_noisy
        from hinas.data.images import load_images, save_image

        runs, dev = ctx.work / f"pipeline_{amp}", ["--set", f"device={ctx.device}"]
        tiny = ["--set", "space.layers=1", "--set", "space.nodes=1"] if ctx.dry else []
        seconds = {  # per command, CUDA start-up included in the first
            "search": cli("search", "--preset", "smoke", *dev, *tiny, "--set", f"amp='{amp}'", "--out", runs / "search",
                          "--quiet"),
            "retrain": cli("retrain", "--preset", "smoke", "--genotype", runs / "search", *dev, "--set", f"amp='{amp}'",
                           "--out", runs / "retrain", "--quiet"),
            "evaluate": cli("evaluate", "--preset", "smoke", "--model", runs / "retrain", *dev, "--out", runs / "evaluate",
                            *(["--set", f"sets=[{gray_pngs(runs / 'test', 2, 48, 48)}]"] if ctx.dry else []), "--quiet"),
        }
        noisy = runs / "noisy"
        for name, img in list(load_images("embedded-val", channels=1))[:2]:
            save_image(seeded_noisy(img[:, :128, :128], 25, name), noisy / f"{name}.png")
        seconds["restore"] = cli("restore", runs / "retrain", noisy, runs / "restored", "--device", ctx.device, "--quiet")
        restored = sorted(p.name for p in (runs / "restored").rglob("*.png"))
        if restored != sorted(p.name for p in noisy.glob("*.png")):
            raise CheckFailed(f"restore wrote {restored}")
        search, retrain = read_json(runs / "search" / "metrics.json"), read_json(runs / "retrain" / "metrics.json")
        evaluated = read_json(runs / "evaluate" / "metrics.json")["results"][0]
        start = next(e for e in map(json.loads, (runs / "search" / "log.jsonl").read_text().splitlines())
                     if e["event"] == "start")
        if torch.device(search["device"]).type != ctx.device:
            raise CheckFailed(f"search ran on {search['device']}, not {ctx.device}")
        psnr = {"search_val": finite(search["val_psnr"], "search val_psnr"),
                "retrain_val": finite(retrain["val_psnr"], "retrain val_psnr"),
                "evaluate": finite(evaluated["psnr"], "evaluate psnr")}
        return {"command_seconds": seconds, "psnr": psnr, "search_amp": start.get("amp"), "device": search["device"],
                "summary": f"amp {start.get('amp')}; PSNR eval {psnr['evaluate']:.2f} dB; "
                           + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())}

    return run


def fused_float64(ctx: Context) -> dict[str, Any]:
    """Both paper spaces on the device (dry: a small space), float64, random alphas and betas, one forward and backward."""
    import torch

    from hinas.nas.space import SearchSpace, preset
    from hinas.nas.supernet import Supernet

    torch.set_default_dtype(torch.float64)
    spaces = ({"small": (SearchSpace(task="denoise", in_channels=1, layers=2, nodes=2, filters=4), (2, 1, 8, 8))} if ctx.dry
              else {"paper-denoise": (preset("paper-denoise"), (2, 1, 16, 16)), "paper-sr": (preset("paper-sr"), (2, 3, 8, 8))})
    worst: dict[str, float] = {}
    for name, (space, shape) in spaces.items():
        torch.manual_seed(0)
        ref = Supernet(space, impl="reference")
        with torch.no_grad():
            ref.alpha.normal_(0, 0.5)
            ref.beta.normal_(0, 0.5)
        fused = Supernet(space)
        fused.load_reference_state(ref.state_dict())
        x = torch.rand(shape, device=ctx.device)
        outs, grads = [], []
        for net in (ref.to(ctx.device), fused.to(ctx.device)):
            out = net(x)
            (out * torch.linspace(-1, 1, out.numel(), device=ctx.device).view_as(out)).sum().backward()
            outs.append(out.detach())
            grads.append(net.reference_state({n: p.grad for n, p in net.named_parameters()}))
        expected = ref.state_dict()
        pairs = [("output", outs[1], outs[0]), *((f"grad {k}", grads[1][k], v) for k, v in grads[0].items()),
                 *((f"state {k}", v, expected[k]) for k, v in fused.reference_state().items() if v.is_floating_point())]
        for what, got, want in pairs:  # as tests/test_fused.py: 1e-9 of the tensor's scale, 1e-14 for tensors ~0
            diff, scale = float((got - want).abs().max()), float(want.abs().max())
            worst[name] = max(worst.get(name, 0.0), diff / (1e-9 * scale + 1e-14))
            if diff > 1e-9 * scale + 1e-14:
                raise CheckFailed(f"{name}: {what} differs by {diff:.3g} at scale {scale:.3g} (float64 allows 1e-9)")
    return {"worst_share_of_tolerance": worst,
            "summary": ", ".join(f"{k}: worst {v:.1e} of the tolerance" for k, v in worst.items())}


def search_job(ctx: Context, compile_mode: str | None = None) -> tuple[Any, Any, Any]:
    """A SearchJob on synthetic BSD-sized data (dry: tiny), set up as ``hinas.engine.loop.fit`` sets one up;
    (job, config, the uncompiled supernet). ``compile_mode``: None (eager) or a torch.compile mode (dry: the eager backend).

    The paper split: 300 images, 6 held out, 147 weight and 147 arch images, 64x64 patches, batch 6.
    """
    import torch
    from tqdm.auto import tqdm

    from hinas.engine.loop import set_up, start_run
    from hinas.engine.settings import SearchConfig, resolve
    from hinas.jobs.search import SearchJob

    size = (40, 48) if ctx.dry else (321, 481)
    data = ctx.work / "bsd-like"
    if not data.exists():  # made once for the parts that need it; renamed whole, so a killed part leaves none
        gray_pngs(ctx.work / "bsd-like.partial", 12 if ctx.dry else 300, *size).rename(data)
    cfg = resolve(SearchConfig, "smoke" if ctx.dry else "paper-denoise",
                  overrides=[f"data={data}", f"device={ctx.device}", *(["space.layers=1", "space.nodes=1"] if ctx.dry else [])])
    job = SearchJob(cfg)
    set_up(job, start_run(ctx.work / "search-job", job.kind, cfg, overwrite=False, resume=False, force=False, progress=False))
    model = job.model
    job.bar = tqdm(disable=True)
    if compile_mode:
        job.model = torch.compile(model, backend="eager") if ctx.dry else torch.compile(model, mode=compile_mode)
    return job, cfg, model


def take_steps(job: Any, state: Any, count: int) -> float:
    """``count`` search steps from the real loaders (a new epoch of patches when one runs out); seconds per step."""
    synchronize(job.device)
    start = time.perf_counter()
    done = 0
    while done < count:
        for batch in job.batches(state):
            job.step(state, batch)
            done += 1
            if done == count:
                break
        else:
            state.step = 0
    synchronize(job.device)
    return (time.perf_counter() - start) / count


def paper_step(compile_mode: str | None) -> Callable[[Context], dict[str, Any]]:
    def run(ctx: Context) -> dict[str, Any]:
        from hinas.jobs.search import SearchProgress

        start = time.perf_counter()
        job, cfg, model = search_job(ctx, compile_mode)
        warm, timed = (0, 1) if ctx.dry else (2, 20)
        weights_only = SearchProgress(epoch=1)
        first = take_steps(job, weights_only, 1)  # compiles, picks cuDNN algorithms
        if warm:
            take_steps(job, weights_only, warm)
        per_step = {"weights": take_steps(job, weights_only, timed)}
        both = SearchProgress(epoch=cfg.arch_start)
        take_steps(job, both, 1 + warm)
        per_step["arch+weights"] = take_steps(job, both, timed)
        model.eval()  # validated uncompiled either way: the search compiles nothing
        val_kw = {"task": cfg.space.task, "sigma": cfg.val_sigma, "scale": None}
        job.ctx.evaluate(model, job.val_imgs, **val_kw)
        synchronize(job.device)
        t = time.perf_counter()
        job.ctx.evaluate(model, job.val_imgs, **val_kw)
        synchronize(job.device)
        validation = time.perf_counter() - t
        warm_epochs = cfg.arch_start - 1
        full = job.per_epoch * (warm_epochs * per_step["weights"] + (cfg.epochs - warm_epochs) * per_step["arch+weights"])
        full += cfg.epochs * validation
        return {"seconds_per_step": per_step, "first_step_seconds": first, "validation_seconds": validation,
                "steps_per_epoch": job.per_epoch, "epochs": cfg.epochs, "batch": cfg.batch, "patch": cfg.patch,
                "amp": str(job.amp), "projected_search_minutes": full / 60, "setup_seconds": time.perf_counter() - start,
                "summary": f"{per_step['arch+weights'] * 1e3:.1f} ms/step (arch+weights), {per_step['weights'] * 1e3:.1f} "
                           f"weights only; {job.per_epoch} steps/epoch; full {cfg.epochs}-epoch search ~"
                           f"{full / 60:.1f} min (target 10; {PAPER_EPOCHS_NOTE})"}

    return run


def sync_warnings(ctx: Context) -> dict[str, Any]:
    """Count torch's synchronisation warnings over a few arch+weight steps; the lines that cause them."""
    import collections
    import warnings

    import torch

    from hinas.jobs.search import SearchProgress

    job, cfg, _ = search_job(ctx)
    state = SearchProgress(epoch=cfg.arch_start)
    take_steps(job, state, 2)
    steps = 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ctx.device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            take_steps(job, state, steps)
        finally:
            if ctx.device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"steps": steps, "warnings": len(syncs), "per_step": len(syncs) / steps, "where": dict(where.most_common(10)),
            "summary": f"{len(syncs) / steps:.1f} per step" + (f"; top {', '.join(list(where)[:3])}" if where else "")
            + ("" if ctx.device == "cuda" else " (no CUDA: nothing to count)")}


def resume_sigterm(ctx: Context) -> dict[str, Any]:
    """SIGTERM a search (a forked CLI process) right after its first per-step checkpoint, then resume it to the end."""
    from hinas.cli import main

    run = ctx.work / "resume" / "run"
    settings = [f"device={ctx.device}", "checkpoint_every=1", f"patches_per_image={1 if ctx.dry else 8}",
                *(["space.layers=1", "space.nodes=1"] if ctx.dry else [])]
    argv = ["search", "--preset", "smoke", *(a for s in settings for a in ("--set", s)), "--out", str(run), "--quiet"]
    stderr = ctx.work / "resume" / "stderr.txt"
    stderr.parent.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # never returns: an exception here must not run on as a copy of the part
        code = 1
        try:
            with open(stderr, "w") as err:
                os.dup2(err.fileno(), 2)
                code = main(argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    ckpt, first, code = run / "checkpoint.pt", None, None
    while code is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
        elif ckpt.exists():
            stamp = (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns)  # written atomically: a new file each save
            first = first or stamp
            if stamp != first:  # the save after step 1
                os.kill(pid, signal.SIGTERM)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.01)
    err = stderr.read_text()
    if code != 128 + signal.SIGTERM or "stopped by SIGTERM" not in err:
        raise CheckFailed(f"the signalled search exited {code}, not {128 + signal.SIGTERM}: {err[-500:]}")
    stopped_at = err.strip().splitlines()[-1]
    seconds = cli("search", "--resume", run, "--quiet")
    metrics = read_json(run / "metrics.json")
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    if metrics["epochs_run"] != metrics["epochs"] or events.count("resume") != 1 or events[-1] != "end":
        raise CheckFailed(f"resumed run: epochs_run {metrics['epochs_run']}, events {events}")
    return {"stopped": stopped_at, "resume_seconds": seconds, "val_psnr": finite(metrics["val_psnr"], "val_psnr"),
            "summary": f"stopped at {stopped_at.split(' at ', 1)[-1].split(';')[0]}, exit {code}; "
                       f"resumed to the end in {seconds:.1f}s"}


def benchmark(script: str, flags: list[str], results: str) -> Callable[[Context], dict[str, Any]]:
    def run(ctx: Context) -> dict[str, Any]:
        path = ROOT / "benchmarks" / script
        if ctx.dry:  # minutes on a CPU: check that the script still takes these flags
            text = path.read_text()
            unknown = [f for f in flags if f.startswith("--") and f'"{f}"' not in text]
            if unknown:
                raise CheckFailed(f"{script} no longer takes {', '.join(unknown)}")
            return {"summary": "dry run: flags checked, not run"}
        subprocess.run([sys.executable, str(path), *flags], check=True, cwd=ROOT)
        made = ROOT / "benchmarks" / "results" / results
        if made.exists():
            shutil.copy(made, ctx.out_dir / results)
        return {"results": str(ctx.out_dir / results), "summary": f"wrote {results}"}

    return run


PARTS = [
    Part("environment", 60, environment),
    Part("pipeline_auto", 90, pipeline("auto"), dry=False),
    Part("pipeline_fp16", 90, pipeline("fp16"), dry=False),
    Part("pipeline_off", 90, pipeline("off")),
    Part("fused_float64", 60, fused_float64),
    Part("paper_step_eager", 90, paper_step(None)),
    Part("sync_warnings", 60, sync_warnings),
    Part("resume_sigterm", 60, resume_sigterm),
    Part("paper_step_compiled", 150, paper_step("default")),
    Part("paper_step_cudagraphs", 150, paper_step("reduce-overhead"), dry=False),  # on the CPU the same as compiled
    Part("bench_supernet", 150, benchmark("supernet.py", ["--device", "cuda", "--quick"], "supernet_cuda.json")),
    Part("bench_inference", 90, benchmark("inference.py", ["--device", "cuda", "--repeats", "1"], "inference_cuda.json")),
]
"""In order of importance: the budget runs out on the last ones first."""


# --- the runner --------------------------------------------------------------------------------------


def run_part(part: Part, limit: float, ctx: Context) -> dict[str, Any]:
    """``part`` in a forked child leading its own process group, killed with all it started after ``limit`` seconds;
    its output goes to ``gpu_check.log`` in the output folder."""
    result_file, log_file = ctx.work / f"{part.name}.result.json", ctx.work / f"{part.name}.log"
    start = time.monotonic()
    with open(log_file, "w") as log:
        pid = os.fork()
        if pid == 0:  # never returns: whatever happens, the child must not run on into the parent's loop
            try:
                os.setsid()
                os.dup2(log.fileno(), 1)  # for what it runs
                os.dup2(log.fileno(), 2)
                sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))  # noqa: SIM115
                try:
                    result = {"status": "ok", **part.run(ctx)}
                except BaseException as err:  # noqa: BLE001  (recorded; this process ends here anyway)
                    traceback.print_exc()
                    result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:1000]}
                result_file.write_text(json.dumps(result, indent=1, default=str) + "\n")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        done, _, usage = os.wait4(pid, os.WNOHANG)
        timed_out = False
        while not done:
            if not timed_out and time.monotonic() - start > limit:
                os.killpg(pid, signal.SIGKILL)
                timed_out = True
            time.sleep(0.05)
            done, _, usage = os.wait4(pid, os.WNOHANG)
    seconds, cpu = time.monotonic() - start, usage.ru_utime + usage.ru_stime
    output = log_file.read_text(errors="replace")
    with open(ctx.out_dir / "gpu_check.log", "a") as combined:
        combined.write(f"===== {part.name} ({seconds:.1f}s) =====\n{output}\n")
    if result_file.exists():
        return {**read_json(result_file), "seconds": seconds, "cpu_seconds": cpu}
    return {"status": "timeout" if timed_out else "failed", "seconds": seconds, "cpu_seconds": cpu,
            "error": f"no result after {limit:.0f}s" if timed_out else "the part's process died", "log_tail": output[-1500:]}


def preimport() -> None:
    """Import torch and hinas once, before forking, so that each part does not spend seconds on it. CPU only:
    a child cannot use CUDA once its parent has initialised it, and a hinas import might."""
    import torch._dynamo  # noqa: F401  (the fused cell's recomputation and torch.compile load it on first use)

    import hinas.cli
    import hinas.jobs.retrain
    import hinas.jobs.search
    import hinas.nas.supernet
    import hinas.viz.plots  # noqa: F401  (matplotlib, for the search's drawings)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'part':22} {'status':8} {'wall s':>6} {'CPU s':>6}  result", "-" * 112]
    for name, r in results.items():
        text = r.get("summary") or r.get("error") or ""
        lines.append(f"{name:22} {r['status']:8} {r.get('seconds', 0):6.1f} {r.get('cpu_seconds', 0):6.1f}  {text}")
    return "\n".join(lines)


def write(out: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    report = {"dry_run": args.dry_run, "budget_seconds": args.budget, "parts": results, "table": table(results).splitlines()}
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU with tiny sizes")
    parser.add_argument("--only", help="comma-separated part names (default: all)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all parts together (default: %(default)s)")
    parser.add_argument("--json", help="result file (default: $OUT/gpu_check.json, else benchmarks/results/gpu_check.json)")
    args = parser.parse_args(argv)
    out = Path(args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                             else ROOT / "benchmarks" / "results" / "gpu_check.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "gpu_check.log").write_text("")
    chosen = args.only.split(",") if args.only else [p.name for p in PARTS]
    unknown = set(chosen) - {p.name for p in PARTS}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; parts: {', '.join(p.name for p in PARTS)}")
    deadline = time.monotonic() + args.budget
    if args.dry_run:
        preimport()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context("cpu" if args.dry_run else "cuda", args.dry_run, Path(work), out.parent)
        for part in (p for p in PARTS if p.name in chosen):
            left = deadline - time.monotonic()
            if args.dry_run and not part.dry:
                results[part.name] = {"status": "skipped", "summary": "dry run: same code as a part that runs"}
            elif left < 15:
                results[part.name] = {"status": "skipped", "error": f"out of time ({args.budget:.0f}s budget)"}
            else:
                results[part.name] = run_part(part, min(part.limit, left), ctx)
            print(table({part.name: results[part.name]}).splitlines()[-1], flush=True)
            write(out, args, results)  # after every part: a hard stop still leaves what was found
    print("\n" + table(results))
    print(f"\nwrote {out}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where the search step's time goes: torch.profiler over the paper's denoising supernet step, float32 and bf16.

One search step as benchmarks/train_step.py times it (the paper's denoising supernet, batch 6 of 64x64 gray: an
architecture step with Adam, then a weight step with SGD), on one thread, in float32 NCHW and in bf16 autocast with
channels_last input, and a third form that is not the package's: bf16 with the fused cell's depthwise convolutions
run in float32 (patched here), because oneDNN's bf16 depthwise backward is the bf16 step's largest cost. After a
warm-up step, ``--steps`` unprofiled steps are timed (CPU time) and ``--steps`` more run under the profiler; ops are
ranked by self time and also summed into kinds (convolution, batch norm, softmax, cat, add, copies, ...); the profiler
counts elapsed time per op (on a busy machine, time descheduled too), so its shares are what to read, and the
unprofiled CPU times are what to compare. Prints the tables and writes benchmarks/results/search_profile.json.

    python benchmarks/search_profile.py [--steps 2] [--top 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from hinas.engine.losses import restoration_loss
from hinas.nas import supercell
from hinas.nas.space import preset
from hinas.nas.supernet import Supernet

RESULTS = Path(__file__).parent / "results"
KINDS = {  # first match wins; ops are aten names
    "convolution": ("conv", "mkldnn_convolution"),
    "batch norm": ("batch_norm",),
    "leaky relu": ("leaky_relu",),
    "softmax": ("softmax",),
    "cat": ("aten::cat",),
    "add / mul": ("aten::add", "aten::mul", "aten::sum", "aten::div", "aten::sub", "aten::addcmul", "aten::addcdiv",
                  "aten::lerp", "aten::sqrt", "aten::_foreach"),
    "copies": ("copy_", "clone", "contiguous", "aten::to", "_to_copy", "empty_like", "aten::repeat",
               "block_diag", "index_select", "aten::fill_", "aten::zero_", "aten::zeros"),
}


def kind_of(name: str) -> str:
    return next((k for k, keys in KINDS.items() if any(key in name for key in keys)), "other")


def _depthwise_float32(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, padding: int, copies: int = 1) -> torch.Tensor:
    """``supercell._depthwise_pointwise`` with the depthwise convolution outside autocast, in float32."""
    x = torch.cat([x] * copies, dim=1) if copies > 1 else x
    with torch.autocast("cpu", enabled=False):
        h = F.conv2d(x.float(), dw.float(), padding=padding, groups=x.shape[1])
    return F.conv2d(h, pw)


def profile_step(precision: str, steps: int, top: int) -> dict[str, Any]:
    torch.manual_seed(0)
    amp = None if precision == "float32" else torch.bfloat16
    layout = torch.contiguous_format if precision == "float32" else torch.channels_last
    original = supercell._depthwise_pointwise
    if precision == "bf16, depthwise float32":
        supercell._depthwise_pointwise = _depthwise_float32
    model = Supernet(preset("paper-denoise")).to(memory_format=layout)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3, weight_decay=1e-3)
    batches = [(torch.rand(6, 1, 64, 64), torch.rand(6, 1, 64, 64)) for _ in range(2)]

    def step() -> None:
        for opt, (x, y) in ((a_opt, batches[0]), (w_opt, batches[1])):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                pred = model(x.to(memory_format=layout))
            restoration_loss(pred.float(), y, "mse", 0.5, 0.5).backward()
            opt.step()

    step()
    start = time.process_time()
    for _ in range(steps):
        step()
    plain_cpu = (time.process_time() - start) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    supercell._depthwise_pointwise = original
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Backward" in e.key]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6 / steps
    ops = sorted(({"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6 / steps, "calls": e.count // steps}
                  for e in events), key=lambda r: -r["self_cpu_s"])
    kinds: dict[str, float] = {}
    for r in ops:
        kinds[kind_of(r["op"])] = kinds.get(kind_of(r["op"]), 0.0) + r["self_cpu_s"]
    kinds["outside aten (python, autograd, profiler)"] = total - sum(kinds.values())
    return {"precision": precision, "layout": "channels_last" if amp else "nchw", "cpu_s_per_step": plain_cpu,
            "profiled_self_cpu_s_per_step": total, "top_ops": ops[:top],
            "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [profile_step(p, args.steps, args.top) for p in ("float32", "bf16", "bf16, depthwise float32")]
    for r in rows:
        r["speed_up_vs_float32"] = rows[0]["cpu_s_per_step"] / r["cpu_s_per_step"]
        total = r["profiled_self_cpu_s_per_step"]
        print(f"\n{r['precision']} {r['layout']}: {r['cpu_s_per_step']:.2f} CPU s/step unprofiled "
              f"({r['speed_up_vs_float32']:.2f}x float32's), {total:.2f} s profiled")
        print(f"{'op':44s} {'self s':>10s} {'share':>6s} {'calls':>6s}")
        for op in r["top_ops"]:
            print(f"{op['op'][:44]:44s} {op['self_cpu_s']:10.3f} {op['self_cpu_s'] / total:6.1%} {op['calls']:6d}")
        print(f"{'kind':44s} {'self s':>10s} {'share':>6s}")
        for kind, s in r["kinds"].items():
            print(f"{kind[:44]:44s} {s:10.3f} {s / total:6.1%}")
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": 1, "steps": args.steps,
            "torch": torch.__version__, "model": "Supernet(preset('paper-denoise')), batch 6 of 64x64, arch + weight step"}
    (RESULTS / "search_profile.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

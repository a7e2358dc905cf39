"""Peak memory of holding a training set in memory: float32 (as hinas did) against uint8 (``in_memory`` now).

The search and retraining hold every training image decoded, once per process (and once per rank under
torchrun). DIV2K train, 800 images of about 2040x1404x3, is 27 GB as float32, more than most machines
have; ``hinas.data.images.in_memory`` keeps 8-bit images as uint8 and converts per patch. Each mode runs
in a fresh subprocess that decodes a synthetic set of DIV2K-sized images one at a time (float32 values
k/255, as decoding an 8-bit PNG gives) and reports its peak RSS growth (``ru_maxrss`` against the resident
size before loading). The default is 40 images, so the float32 side fits a small machine in under a minute;
the projection to the 800 of DIV2K scales the held bytes and keeps the decoding transient (a few float32 images).

    python benchmarks/data_memory.py [--images 40] [--height 1404] [--width 2040]

Prints a table and writes benchmarks/results/data_memory.json (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DIV2K_TRAIN = 800


class Synthetic(Sequence[tuple[str, torch.Tensor]]):
    """Images decoded on access, like an ``ImageSet``: float32 (3, H, W) on the 1/255 grid of an 8-bit file."""

    def __init__(self, count: int, height: int, width: int) -> None:
        self.count, self.shape = count, (3, height, width)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        g = torch.Generator().manual_seed(i)
        return f"{i:04d}", torch.randint(0, 256, self.shape, dtype=torch.uint8, generator=g).float().div_(255)


def resident_bytes() -> int:
    """Current RSS (Linux /proc), so growth is measured from now, not from an earlier peak such as imports."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(mode: str, count: int, height: int, width: int) -> dict:
    """Load the set in this process; ``float32`` keeps the decoded tensors as hinas did before uint8 storage."""
    from hinas.data.images import in_memory

    images = Synthetic(count, height, width)
    before = resident_bytes()
    held = list(images) if mode == "float32" else in_memory(images)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stored = held.stored if mode == "uint8" else [img for _, img in held]
    return {"mode": mode, "peak_growth_bytes": peak - before, "held_bytes": sum(t.nbytes for t in stored)}


def measure(mode: str, count: int, height: int, width: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--images", str(count), "--height", str(height), "--width", str(width)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def projected(row: dict, count: int) -> float:
    """Peak bytes for DIV2K train: the held bytes scale with the image count, the decoding transient does not."""
    return row["peak_growth_bytes"] - row["held_bytes"] + row["held_bytes"] / count * DIV2K_TRAIN


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--height", type=int, default=1404)
    parser.add_argument("--width", type=int, default=2040)
    parser.add_argument("--json", type=Path, default=RESULTS / "data_memory.json")
    parser.add_argument("--child", choices=("float32", "uint8"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.images, args.height, args.width)))
        return {}
    rows = {mode: measure(mode, args.images, args.height, args.width) for mode in ("float32", "uint8")}
    float_bytes = args.images * 3 * args.height * args.width * 4
    ratio = rows["uint8"]["peak_growth_bytes"] / rows["float32"]["peak_growth_bytes"]
    result = {
        "images": args.images, "height": args.height, "width": args.width, "float32_bytes": float_bytes,
        "rows": rows, "uint8_over_float32": ratio,
        "div2k_train_projection_gb": {m: projected(r, args.images) / 1e9 for m, r in rows.items()},
        "python": platform.python_version(), "torch": torch.__version__,
    }
    print(f"{args.images} images of 3x{args.height}x{args.width} (float32 tensors alone: {float_bytes / 1e6:.0f} MB)")
    print(f"{'storage':8} {'peak growth MB':>15} {'held MB':>9} {'DIV2K train (800) GB':>21}")
    for mode, r in rows.items():
        gb = result["div2k_train_projection_gb"][mode]
        print(f"{mode:8} {r['peak_growth_bytes'] / 1e6:15.0f} {r['held_bytes'] / 1e6:9.0f} {gb:21.1f}")
    div2k = result["div2k_train_projection_gb"]
    print(f"uint8 / float32 peak: {ratio:.3f} here, {div2k['uint8'] / div2k['float32']:.3f} projected to DIV2K train")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

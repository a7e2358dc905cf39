"""Bicubic SR baseline on Set5, Set14 and B100 next to MATLAB's published table.

A check of the whole evaluation path (MATLAB imresize, uint8 rounding, BT.601
luma, scale-pixel shave): a faithful port lands within a few hundredths of a dB.

    python benchmarks/bicubic_check.py --data-root /path/to/datasets   (with hinas installed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from hinas.data.images import data_root, named_set
from hinas.eval.metrics import convention_for
from hinas.eval.scoring import bicubic_baseline

MATLAB = {"Set5": (33.66, 30.39, 28.42), "Set14": (30.24, 27.55, 26.00), "B100": (29.56, 27.21, 25.96)}
SCALES = (2, 3, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=data_root(), help="folder of the sets ($HINAS_DATA_ROOT)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bicubic_check.json"))
    args = parser.parse_args()
    if args.data_root is None:
        parser.error("no data root: pass --data-root or set HINAS_DATA_ROOT")

    rows = []
    print(f"{'set':6} {'scale':>5} {'ours':>8} {'MATLAB':>8} {'diff':>7} {'SSIM':>7}")
    for name, reference in MATLAB.items():
        images = list(named_set(name, args.data_root))
        for scale, ref in zip(SCALES, reference):
            per_image = bicubic_baseline(images, scale)
            psnr = float(np.mean([p for p, _ in per_image.values()]))
            ssim = float(np.mean([s for _, s in per_image.values()]))
            print(f"{name:6} {'x' + str(scale):>5} {psnr:8.3f} {ref:8.2f} {psnr - ref:+7.3f} {ssim:7.4f}")
            rows.append(
                dict(
                    set=name,
                    scale=scale,
                    psnr=psnr,
                    ssim=ssim,
                    matlab_psnr=ref,
                    diff=psnr - ref,
                    convention=dataclasses.asdict(convention_for("sr", scale)),
                    per_image={k: {"psnr": p, "ssim": s} for k, (p, s) in per_image.items()},
                )
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

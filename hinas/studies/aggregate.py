"""Mean and spread over repeated runs of one configuration (seeds, ablation repeats), e.g. a queue of DVC experiments.

Each input is a run directory (read: its ``metrics.json``) or a metrics JSON file (a run's ``metrics.json``
taken out of an experiment, or the pipeline report's ``results.json``). Every top-level number is
aggregated, evaluation results are flattened as the report flattens them, and the runs' genotypes (from
search metrics, or a run directory's ``genotype.json``) are compared: a search whose genotype changes
with the seed has not found one architecture.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from hinas.errors import ConfigError
from hinas.files import atomic_write_bytes, read_regular, write_json
from hinas.nas.genotype import Genotype
from hinas.studies.pipeline import flat_results

MAX_METRICS_BYTES = 64 << 20
"""A metrics file larger than this is refused unread (a pipeline report of every image stays far below)."""


def load_run(path: str | Path) -> tuple[dict[str, float], Genotype | None]:
    """The numbers of one run and its genotype, when it has one."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    data = read_regular(file, "run metrics", ConfigError, MAX_METRICS_BYTES)
    try:
        metrics = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{file}: cannot read run metrics ({err}); pass run directories or metrics JSON files") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"{file}: expected a JSON object of metrics")
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numbers.update(flat_results(metrics.get("results", [])))
    if "genotype" in metrics:
        return numbers, Genotype.from_dict(metrics["genotype"])
    if path.is_dir() and (path / "genotype.json").is_file():
        return numbers, Genotype.load(path / "genotype.json")
    return numbers, None


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation (n - 1; None for one value), min and max of a non-empty list."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def bootstrap_difference(a: list[float], b: list[float], *, level: float = 0.95, draws: int = 10_000,
                         seed: int = 0) -> dict[str, float]:
    """Mean of ``a`` minus mean of ``b`` with a percentile bootstrap interval (each group resampled on its own).

    With 3-5 runs a group the interval is wide and, being a bootstrap, somewhat too narrow: read it as "the
    data cannot tell" when it straddles 0, not as a test. The same seed gives the same interval.
    """
    if not a or not b:
        raise ValueError("bootstrap_difference: both groups need at least one value")
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diffs = (rng.choice(xa, (draws, xa.size)).mean(1) - rng.choice(xb, (draws, xb.size)).mean(1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return {"diff": float(xa.mean() - xb.mean()), "low": float(low), "high": float(high), "level": level}


def aggregate(paths: list[str | Path]) -> dict[str, Any]:
    """Per metric: runs holding it, mean, sample standard deviation (n - 1; None for one run), min and max.

    ``genotypes`` groups the runs by the genotype they found (meta such as the epoch ignored);
    ``genotypes_agree`` is None when no run holds a genotype.
    """
    if not paths:
        raise ConfigError("aggregate: name at least one run directory or metrics file")
    labels = [str(p) for p in paths]
    runs = [load_run(p) for p in paths]
    metrics = {}
    for name in dict.fromkeys(k for numbers, _ in runs for k in numbers):
        values = [numbers[name] for numbers, _ in runs if name in numbers]
        metrics[name] = {"runs": len(values), **spread(values)}
    groups: list[tuple[Genotype, list[str]]] = []
    for label, (_, genotype) in zip(labels, runs):
        if genotype is None:
            continue
        same = next((members for g, members in groups if g == genotype), None)
        if same is None:
            groups.append((genotype, [label]))
        else:
            same.append(label)
    return {"runs": labels, "metrics": metrics, "genotypes": [members for _, members in groups],
            "genotypes_agree": len(groups) == 1 if groups else None}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, one row per metric, and a line on genotype agreement."""
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.6g}"

    lines = [f"{len(summary['runs'])} runs", "", "| metric | mean | std | min | max | runs |", "|---|---|---|---|---|---|"]
    for name, m in summary["metrics"].items():
        lines.append(f"| {name} | {num(m['mean'])} | {num(m['std'])} | {num(m['min'])} | {num(m['max'])} | {m['runs']} |")
    groups = summary["genotypes"]
    if groups:
        counted = sum(len(g) for g in groups)
        lines += ["", f"Genotypes: all {counted} runs found the same one." if len(groups) == 1 else
                  f"Genotypes: {len(groups)} different among {counted} runs: " + "; ".join(", ".join(g) for g in groups) + "."]
    return "\n".join(lines) + "\n"


def write(summary: dict[str, Any], out_json: str | Path | None = None, out_md: str | Path | None = None) -> None:
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out_json), summary)
    if out_md:
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out_md), markdown(summary).encode())

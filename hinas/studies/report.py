"""RESULTS.md from the run directories of a results profile: what ran, on what, for how long, and the answer.

The notebook ``05_results.ipynb`` writes it; nothing in it is typed by hand except the sections of other
studies appended verbatim (``extra``), so rebuilding after more runs finish updates every figure.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from hinas.studies.results import (
    Profile,
    budget,
    done,
    grid,
    level_label,
    markdown_table,
    search_beats_random,
    search_rows,
    summarise,
    to_markdown,
)

SEARCH_MARGIN_DB = 5.0
"""How far above its noisy input a denoising supernet must be when its genotype is selected for the search to
count as having learnt the task (issue 17); an SR supernet must beat bicubic."""


def answer(row: dict[str, Any]) -> str:
    """Plain words for one row of :func:`~hinas.studies.results.search_beats_random`: a difference counts only when its
    95% interval excludes zero."""
    gain, low, high = row["gain_db"], row["ci_low"], row["ci_high"]
    interval = f"{gain:+.2f} dB (95% CI {low:+.2f} to {high:+.2f})"
    if low > 0:
        return f"yes, {interval}"
    if high < 0:
        return f"no, worse: {interval}"
    return f"no clear difference: {interval}"


def headlines(beats: list[dict[str, Any]], searches: list[dict[str, Any]], group: str = "lwas") -> list[str]:
    """One line per task and level: ``group`` (the paper's sharing) against the random architectures on every test set,
    and what its searches cost on top; random architectures spend no search time, so a tie means the search did not
    pay for its own CPU time."""
    lines = []
    for task, level in dict.fromkeys((b["task"], b["level"]) for b in beats):
        mine = [b for b in beats if (b["task"], b["level"], b["group"]) == (task, level, group)]
        if not mine:
            continue
        prefix = "denoise-" if task == "denoise" else "sr-"
        cpu = [s["cpu_seconds"] / 60 for s in searches if s["search"].startswith(prefix) and s["sharing"] == group
               and s.get("cpu_seconds")]
        shared = " (one search serves every sigma)" if task == "denoise" else ""
        cost = f"; each search cost {sum(cpu) / len(cpu):.0f} CPU-minutes on top{shared}" if cpu else ""
        sets = "; ".join(f"{b['set']}: {answer(b)}" for b in mine)
        if mine[0].get("iterations") and mine[0].get("random_iterations"):
            sets += f"; {mine[0]['iterations']} retraining iterations on average, random {mine[0]['random_iterations']}"
        lines.append(f"- **{task} {level_label(task, level)}**, {group} ({mine[0]['n']} seeds) "
                     f"against {mine[0]['n_random']} random architectures: {sets}{cost}.")
    return lines


def verdict_table(beats: list[dict[str, Any]]) -> str:
    """:func:`~hinas.studies.results.search_beats_random` as a Markdown table, each row's answer in words."""
    return to_markdown([{**b, "answer": answer(b)} for b in beats],
                       {"task": "task", "level": "level", "set": "set", "group": "group", "n": "runs",
                        "n_random": "random", "mean": "mean PSNR", "random_mean": "random mean",
                        "random_best": "best random", "iterations": "iterations",
                        "random_iterations": "random iterations", "answer": "beats random?"})


def spread_table(summary: list[dict[str, Any]]) -> str:
    """:func:`~hinas.studies.results.summarise` as a Markdown table."""
    return to_markdown(summary, {"task": "task", "level": "level", "set": "set", "group": "group", "n": "n",
                                 "mean": "mean PSNR", "std": "std", "min": "min", "max": "max"})


def margins(searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each search row with its supernet's margin over the degraded input at the selected epoch and whether it is enough
    (:data:`SEARCH_MARGIN_DB` for denoising, above bicubic for SR)."""
    out = []
    for r in searches:
        margin = r["val_psnr"] - r["input_psnr"]
        enough = margin > 0 if r["search"].startswith("sr-") else margin >= SEARCH_MARGIN_DB
        out.append({**r, "margin_db": margin, "learnt": "yes" if enough else "NO"})
    return out


def worse_than_input(runs: str | Path, profile: Profile, data_root: str = "") -> tuple[list[dict[str, Any]], int]:
    """Every evaluated model that made at least one test image worse than its degraded input (noisy, or bicubic), with
    how many and its worst; and how many evaluations lack per-image scores (runs from before they were recorded). Why:
    a mean over a set hides a network that fails on a few images, and one such network widens a group's interval."""
    rows, missing = [], 0
    for job in (j for j in grid(profile, data_root) if j.kind == "evaluate" and done(Path(runs), j)):
        path = Path(runs) / job.out / "per_image.csv"
        if not path.is_file():
            missing += 1
            continue
        with path.open(newline="") as f:
            images = list(csv.DictReader(f))
        worse = [r for r in images if float(r["psnr"]) < float(r["input_psnr"])]
        if worse:
            worst = min(worse, key=lambda r: float(r["psnr"]) - float(r["input_psnr"]))
            rows.append({"task": job.info["task"], "level": job.info["level"], "model": Path(job.out).name,
                         "worse": len(worse), "images": len(images), "worst": f"{worst['set']}/{worst['name']}",
                         "psnr": float(worst["psnr"]), "input_psnr": float(worst["input_psnr"])})
    return rows, missing


def _span(runs: Path, outs: Sequence[str]) -> tuple[str, str]:
    """First and last time stamp in the logs of ``outs`` (UTC), or ``-`` when none logged."""
    stamps = []
    for out in outs:
        log = runs / out / "log.jsonl"
        if log.is_file():
            lines = log.read_text().splitlines()
            stamps += [json.loads(line)["time"] for line in (lines[0], lines[-1]) if line.strip()]
    if not stamps:
        return "-", "-"

    def utc(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

    return utc(min(stamps)), utc(max(stamps))


def costs(runs: str | Path, profile: Profile, data_root: str = "") -> list[dict[str, Any]]:
    """Per kind of run (search, retrain): how many finished, their summed wall and CPU minutes, first and last log time."""
    runs = Path(runs)
    every = grid(profile, data_root)
    out = []
    for kind in ("search", "retrain"):
        jobs = [j for j in every if j.kind == kind and done(runs, j)]
        metrics = [json.loads((runs / j.out / "metrics.json").read_text()) for j in jobs]
        first, last = _span(runs, [j.out for j in jobs])
        out.append({"runs": kind, "finished": len(jobs), "of": sum(j.kind == kind for j in every),
                    "wall_min": sum(m.get("seconds", 0.0) for m in metrics) / 60,
                    "cpu_min": sum(m.get("cpu_seconds", 0.0) for m in metrics) / 60, "first": first, "last": last})
    return out


def machines(rows: list[dict[str, Any]], searches: list[dict[str, Any]]) -> str:
    """Which machines computed the searches and retrains, with how many of each (sessions may land on different ones)."""
    count: dict[str, dict[str, int]] = {}
    for kind, runs in (("searches", searches), ("retrains", [r for r in rows if r["family"] != "bicubic"])):
        for r in runs:
            name = r.get("machine") or "machine not recorded"
            count.setdefault(name, {}).setdefault(kind, 0)
            count[name][kind] += 1
    return "; ".join(f"{name} ({', '.join(f'{n} {kind}' for kind, n in kinds.items())})" for name, kinds in count.items())


def level_machines(rows: list[dict[str, Any]]) -> list[str]:
    """A line per task and level naming the machine its models were retrained on, a warning where there were several:
    the same CPU time bought different amounts of training there, so that comparison is confounded with the machine.
    Levels on different machines are each fair within themselves, but their absolute figures are not comparable."""
    levels: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        if r["family"] != "bicubic":
            levels.setdefault((r["task"], r["level"]), set()).add(r.get("machine") or "machine not recorded")
    lines = []
    for (task, level), names in levels.items():
        where = f"{'denoising' if task == 'denoise' else 'SR'} {level_label(task, level)}"
        if len(names) == 1:
            lines.append(f"  - {where}: retrained on {next(iter(names))}")
        else:
            lines.append(f"  - **Mixed machines at {where}**: retrained on {' and '.join(sorted(names))}; equal CPU time "
                         "is not equal training there, so read its comparison with care.")
    return lines


def sr_data(profile: Profile) -> str:
    """Where SR searches and retrains read their images, naming a scale retrained on other images than the searches'."""
    other = [f"x{scale} retrained on {profile.sr_train_data(scale)}" for task, scale in profile.order
             if task == "sr" and profile.sr_train_data(scale) != profile.sr_data]
    return profile.sr_data + (f" ({', '.join(other)})" if other else "")


def _worse_section(runs: str | Path, profile: Profile, data_root: str) -> list[str]:
    rows, missing = worse_than_input(runs, profile, data_root)
    lines = ["A network whose output is below its degraded input on some test images has failed there, whatever its "
             "mean; such failures, not small differences, make the widest intervals above."]
    if missing:
        lines.append(f"Per-image scores were not recorded for {missing} evaluations (run before they were), which are "
                     "not checked here.")
    lines.append("")
    lines.append(to_markdown(rows, {"task": "task", "level": "level", "model": "model", "worse": "images worse",
                                    "images": "of", "worst": "worst image", "psnr": "its PSNR", "input_psnr": "input PSNR"})
                 if rows else "None of the checked evaluations made any test image worse than its input.\n")
    return lines


def report(runs: str | Path, profile: Profile, name: str, rows: list[dict[str, Any]], *, data_root: str = "",
           figures: str = "results", extra: Sequence[str | Path] = ()) -> str:
    """The whole RESULTS.md for profile ``name`` from its runs and the rows :func:`~hinas.studies.results.collect` read;
    ``figures`` is where the notebook wrote its figures, relative to RESULTS.md; ``extra`` are Markdown files of other
    studies appended as they are."""
    searches = margins(search_rows(runs, profile, data_root))
    beats = search_beats_random(rows)
    left = [j.out for j in grid(profile, data_root) if not done(Path(runs), j)]
    parts = [
        "# Results: does the HiNAS search beat random architectures at equal CPU time?\n",
        f"Written by `notebooks/05_results.ipynb` (profile `{name}`) from the run directories; rebuild it after more "
        "runs finish. The sections after the horizontal rule are other studies, pasted from their own files.\n",
        "## Hardware, budget and wall time\n",
        f"- **Hardware**: {machines(rows, searches)}; {profile.hardware}; PyTorch {torch.__version__}, Python "
        f"{platform.python_version()}.",
        "- **Where each level was retrained** (every model of a level on one machine makes its comparison fair):",
        *level_machines(rows),
        f"- **Budget** (every model of a task and level gets the same retraining CPU time, whatever its speed): "
        f"{budget(profile)}.",
        f"- **Data**: denoising searches on {profile.denoise_search_data}, retraining on {profile.denoise_data}, tests on "
        f"{', '.join(profile.denoise_sets)} (sigma {', '.join(map(str, profile.sigmas))}); SR on {sr_data(profile)}, tests on "
        f"{', '.join(profile.sr_sets) or '-'}.",
        f"- **Runs left undone**: {len(left)}" + (f" ({', '.join(left[:8])}{' ...' if len(left) > 8 else ''})" if left else ""),
        "",
        to_markdown(costs(runs, profile, data_root), {
            "runs": "runs", "finished": "finished", "of": "of", "wall_min": "wall (min)", "cpu_min": "CPU (min)",
            "first": "first log (UTC)", "last": "last log (UTC)"}),
        "## The answer, per task and level\n",
        *headlines(beats, searches),
        "",
        "Mean PSNR of each group minus the mean of the random architectures of the same space, with a 95% "
        "percentile-bootstrap interval over runs (seeds of a search, draws of random architectures). A group beats "
        "random only where the whole interval is above zero.\n",
        verdict_table(beats),
        "## Did every search learn?\n",
        f"The supernet's validation PSNR at the selected epoch beside its degraded input's: a denoising search counts "
        f"as having learnt the task {SEARCH_MARGIN_DB:g} dB or more above its noisy input, an SR search above bicubic.\n",
        to_markdown(searches, {"search": "search", "sharing": "sharing", "steps": "steps", "seconds": "wall (s)",
                               "best_epoch": "selected epoch", "val_psnr": "supernet PSNR", "input_psnr": "input PSNR",
                               "margin_db": "margin (dB)", "learnt": "learnt?", "skip_ops": "skip ops", "path": "width path"}),
        "## Test images a network made worse than its input\n",
        *_worse_section(runs, profile, data_root),
        "## Every model\n",
        f"![PSNR per model]({figures}/psnr.png)\n",
        markdown_table(rows, profile.latency_size),
        "## Spread per group\n",
        spread_table(summarise(rows)),
    ]
    if extra:
        parts += ["---\n", *(Path(p).read_text().strip() + "\n" for p in extra)]
    return "\n".join(parts)

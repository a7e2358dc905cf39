"""The main job: search, derive and draw, retrain, evaluate, in one call.

With ``cpu-demo`` it is what the README's first command runs on a fresh machine (the embedded photos); with
``cpu-hour`` the same path on the standard gray sets in about an hour of 2 cores. A template for a real pipeline
(see ``dvc.yaml`` for the paper's full protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hinas.data.images import data_root
from hinas.engine.settings import EVAL_PRESETS, EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.jobs.evaluate import evaluate_run
from hinas.jobs.retrain import retrain
from hinas.jobs.search import search


def main_job(out: str | Path = "runs/demo", preset: str = "cpu-demo", *, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole method end to end into ``out``/{search,retrain,evaluate}; returns the headline figures and paths.

    A preset with evaluation settings (``cpu-hour``: Set12 and BSD68) is evaluated on its sets; the others on
    ``embedded-val``, plus Set12 when ``HINAS_DATA_ROOT`` holds it.
    """
    out = Path(out)
    found = search(resolve(SearchConfig, preset), out / "search", overwrite=overwrite, progress=progress)
    trained = retrain(resolve(TrainConfig, preset, overrides=[f"genotype={found.run_dir}"]), out / "retrain",
                      overwrite=overwrite, progress=progress)
    sigma = resolve(TrainConfig, preset).sigma
    overrides = [f"model={out / 'retrain'}", f"sigmas=[{sigma}]"]
    if preset in EVAL_PRESETS:
        tested = resolve(EvalConfig, preset, overrides=overrides)
    else:  # the embedded photos, and Set12 where it is at hand
        root = data_root()
        sets = ["embedded-val"] + (["Set12"] if root is not None and (root / "Set12").is_dir() else [])
        tested = resolve(EvalConfig, overrides=[*overrides, f"sets={sets}"])
    scores = evaluate_run(tested, out / "evaluate", overwrite=overwrite, progress=progress)
    return {
        "genotype": found.run_dir / "genotype.json",
        "drawing": found.run_dir / "genotype.svg",
        "search_metrics": found.run_dir / "metrics.json",
        "model": out / "retrain" / "best.pt",
        "params_m": trained["params_m"],
        "metrics": out / "evaluate" / "metrics.json",
        "results": scores["results"],
    }

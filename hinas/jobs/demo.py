"""The main job on the embedded photos: search, derive and draw, retrain briefly, evaluate.

It is what the README's first command runs on a fresh machine, and a template
for a real pipeline (see ``dvc.yaml`` for the paper's full protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hinas.data.images import data_root
from hinas.engine.settings import EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.jobs.evaluate import evaluate_run
from hinas.jobs.retrain import retrain
from hinas.jobs.search import search


def main_job(out: str | Path = "runs/demo", preset: str = "cpu-demo", *, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole method end to end into ``out``/{search,retrain,evaluate}; returns the headline figures and paths.

    The evaluation adds Set12 when ``HINAS_DATA_ROOT`` holds it.
    """
    out = Path(out)
    found = search(resolve(SearchConfig, preset), out / "search", overwrite=overwrite, progress=progress)
    trained = retrain(resolve(TrainConfig, preset, overrides=[f"genotype={found.run_dir}"]), out / "retrain",
                      overwrite=overwrite, progress=progress)
    root = data_root()
    sets = ["embedded-val"] + (["Set12"] if root is not None and (root / "Set12").is_dir() else [])
    sigma = resolve(TrainConfig, preset).sigma
    scores = evaluate_run(resolve(EvalConfig, overrides=[f"model={out / 'retrain'}", f"sets={sets}", f"sigmas=[{sigma}]"]),
                          out / "evaluate", overwrite=overwrite, progress=progress)
    return {
        "genotype": found.run_dir / "genotype.json",
        "drawing": found.run_dir / "genotype.svg",
        "search_metrics": found.run_dir / "metrics.json",
        "model": out / "retrain" / "best.pt",
        "params_m": trained["params_m"],
        "metrics": out / "evaluate" / "metrics.json",
        "results": scores["results"],
    }

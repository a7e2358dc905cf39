"""The DVC pipeline end to end at smoke size, offline: dvc repro, then nothing left to do, real metrics."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dvc(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "params-smoke.yaml", work / "params.yaml")
    (work / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks/05_results.ipynb", work / "notebooks/05_results.ipynb")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HINAS_DATA_ROOT", None)
    assert dvc(["init", "--no-scm", "-q"], work, env).returncode == 0
    first = dvc(["repro"], work, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, env, first


def test_every_stage_ran_and_the_report_holds_real_numbers(pipeline):
    work, _, first = pipeline
    for stage in ("prepare", "search_denoise", "search_sr", "retrain_denoise@25", "retrain_sr@2", "evaluate_denoise@25",
                  "evaluate_sr@2", "report", "results"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    results = json.loads((work / "runs/dvc/results.json").read_text())
    assert set(results) == {f"{task}/{level}/embedded-val/{key}" for task, level in (("denoise", "sigma25"), ("sr", "x2"))
                            for key in ("psnr", "ssim", "input_psnr")}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in results.values())
    assert results["sr/x2/embedded-val/input_psnr"] > 20  # bicubic x2 on real photos
    assert "| embedded-val | sigma 25 |" in (work / "runs/dvc/results.md").read_text()
    report = json.loads((work / "runs/dvc/results/report/results.json").read_text())
    assert report["profile"] == "smoke" and not report["left_undone"]
    assert {r["model"] for r in report["rows"]} >= {"hinas-lwas-s0", "random-0", "dncnn-17", "bicubic"}


def test_a_second_repro_has_nothing_to_do(pipeline):
    work, env, _ = pipeline
    again = dvc(["repro"], work, env)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    status = dvc(["status"], work, env)
    assert "Data and pipelines are up to date" in status.stdout


def test_changing_a_param_reruns_only_what_depends_on_it(pipeline):
    work, env, _ = pipeline
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate_sr"]["tile"] = 32
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc(["status"], work, env).stdout
    assert "evaluate_sr@2" in status and "search_denoise" not in status and "retrain_sr@2" not in status


def test_metrics_and_plots_are_declared(pipeline):
    work, env, _ = pipeline
    shown = dvc(["metrics", "show", "--json"], work, env)
    assert shown.returncode == 0 and "results.json" in shown.stdout and "val_psnr" in shown.stdout
    plots = dvc(["plots", "show", "--json"], work, env)
    assert plots.returncode == 0 and "history.json" in plots.stdout

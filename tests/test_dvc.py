"""The DVC pipeline end to end at smoke size, offline, in a fresh git + DVC repository as a user would have it:
dvc repro, then nothing left to do and a clean status, flat numeric metrics, outputs that survive a failed
stage, and the README's experiment recipe (dvc exp run -S, exp show, git show of a kept metrics file)."""

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


def run(args, cwd, env, timeout=900):
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dvc(args, cwd, env, timeout=900):
    return run([sys.executable, "-m", "dvc", *args], cwd, env, timeout)


def git(args, cwd, env):
    result = run(["git", *args], cwd, env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "notebooks/05_results.ipynb"):
        (work / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "results/studies", work / "results/studies")
    shutil.copy(ROOT / "params-smoke.yaml", work / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("HINAS_DATA_ROOT", None)
    git(["init", "-q"], work, env)
    assert dvc(["init", "-q"], work, env).returncode == 0
    git(["add", "-A"], work, env)
    git(["commit", "-qm", "pipeline"], work, env)
    first = dvc(["repro"], work, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, env, first


def test_every_stage_ran_and_the_report_holds_real_numbers(pipeline):
    work, _, first = pipeline
    for stage in ("prepare@denoise", "prepare@sr", "search_denoise", "search_sr", "retrain_denoise@25", "retrain_sr@2",
                  "evaluate_denoise@25", "evaluate_sr@2", "report", "results", "latency"):
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
    written = (work / "runs/dvc/results/report/RESULTS.md").read_text()
    assert "## The answer, per task and level" in written and "| denoise | 25 | embedded-val | lwas |" in written
    assert all(study.read_text().splitlines()[0] in written for study in (ROOT / "results/studies").glob("*.md"))


def test_a_second_repro_has_nothing_to_do_and_git_sees_only_what_to_commit(pipeline):
    work, env, _ = pipeline
    again = dvc(["repro"], work, env)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in dvc(["status"], work, env).stdout
    status = git(["status", "--porcelain", "--untracked-files=normal"], work, env)
    changed = {line[3:].split("/")[0] for line in status.splitlines()}
    assert changed == {"dvc.lock", "metrics"}, changed  # runs/, data/raw/, dvc_plots/ are ignored


def test_metrics_are_flat_numbers_and_plots_are_declared(pipeline):
    work, env, _ = pipeline
    shown = dvc(["metrics", "show", "--json"], work, env)
    assert shown.returncode == 0, shown.stderr
    files = json.loads(shown.stdout)[""]["data"]
    numbers = {f"{path}:{key}": value for path, entry in files.items() for key, value in entry["data"].items()}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()), numbers
    assert numbers["metrics/evaluate_denoise/sigma25/metrics.json:denoise/sigma25/embedded-val/psnr"] > 0
    assert "metrics/search_denoise/metrics.json:val_psnr" in numbers and len(files) == 7
    assert numbers["metrics/latency/point.json:lat1/psnr"] > 0 and numbers["metrics/latency/point.json:lat1/n_random"] == 2
    plots = dvc(["plots", "show", "--json"], work, env)
    assert plots.returncode == 0
    for stage in ("search_denoise", "search_sr", "retrain_denoise/sigma25", "retrain_sr/x2"):
        assert f"metrics/{stage}/history.json" in plots.stdout, stage


def test_changing_a_param_reruns_only_what_depends_on_it(pipeline):
    work, env, _ = pipeline
    original = (work / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["evaluate_sr"]["tile"] = 32
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    status = dvc(["status"], work, env).stdout
    (work / "params.yaml").write_text(original)
    assert "evaluate_sr@2" in status and "search_denoise" not in status and "retrain_sr@2" not in status


def test_a_failing_stage_keeps_the_last_good_outputs(pipeline):
    work, env, _ = pipeline
    manifest = (work / "runs/dvc/data/denoise.json").read_text()
    original = (work / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["data"].update(download=False, denoise=["Set12"])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    failed = dvc(["repro", "prepare@denoise"], work, env)
    (work / "params.yaml").write_text(original)
    assert failed.returncode != 0 and "Set12: no data/raw/Set12/" in failed.stderr + failed.stdout
    assert (work / "runs/dvc/data/denoise.json").read_text() == manifest
    assert "Data and pipelines are up to date" in dvc(["status"], work, env).stdout


def test_the_seeds_recipe_keeps_each_experiments_metrics(pipeline):
    """README, "Seeds and ablations": an experiment's metrics show in exp show and come out of its commit."""
    work, env, _ = pipeline
    git(["add", "-A"], work, env)
    git(["commit", "-qm", "pipeline state"], work, env)
    ran = dvc(["exp", "run", "search_denoise", "-S", "++search_denoise.seed=1"], work, env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "Running stage 'search_denoise'" in ran.stdout and "Running stage 'prepare@denoise'" not in ran.stdout
    shown = dvc(["exp", "show", "--only-changed", "--json"], work, env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    exps = [e for row in rows for e in row.get("experiments") or []]
    assert len(exps) == 1
    exp = exps[0]["revs"][0]
    kept = exp["data"]["metrics"]["metrics/search_denoise/metrics.json"]["data"]
    assert exp["data"]["params"]["params.yaml"]["data"]["search_denoise"]["seed"] == 1
    assert isinstance(kept["val_psnr"], float)
    sha = dvc(["exp", "ls", "--sha-only"], work, env).stdout.split()[-1]
    assert json.loads(git(["show", f"{sha}:metrics/search_denoise/metrics.json"], work, env)) == kept
    committed = set(git(["show", "--name-only", "--format=", sha], work, env).split())  # no data.dvc, nothing from runs/
    assert {"dvc.lock", "params.yaml", "metrics/search_denoise/metrics.json"} <= committed <= {
        "dvc.lock", "params.yaml", *(f"metrics/search_denoise/{f}.json" for f in ("metrics", "history", "genotype"))}
    for rev in ("HEAD", sha):
        (work / "runs/seeds" / rev).mkdir(parents=True)
        for f in ("metrics", "genotype"):
            (work / "runs/seeds" / rev / f"{f}.json").write_text(
                git(["show", f"{rev}:metrics/search_denoise/{f}.json"], work, env))
    agg = run(["hinas", "aggregate", "runs/seeds/HEAD", f"runs/seeds/{sha}"], work, env)
    assert agg.returncode == 0 and "2 runs" in agg.stdout and "| val_psnr |" in agg.stdout, agg.stdout + agg.stderr
    assert "Genotypes: " in agg.stdout

"""Every DVC stage's command resolves against the shipped params, paper and smoke, without running any work.

``dvc repro --dry`` stops at the first dependency that does not exist yet, and CI runs only the smoke
profile, so a wrong section, preset, ``--set`` key or set name in the paper ``params.yaml`` went unseen
until a long run reached it. Here DVC itself expands ``dvc.yaml`` (vars, foreach), each command goes
through the real command line with the work functions replaced by a recorder, and what the stages
would read is checked against what the pipeline gathers and declares.
"""

import ast
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

import hinas.jobs.evaluate
import hinas.jobs.retrain
import hinas.jobs.search
from hinas import cli
from hinas.data.images import NAMED_SETS
from hinas.studies import pipeline, results
from hinas.studies.results import PROFILES

ROOT = Path(__file__).resolve().parents[1]


class Called(Exception):
    """Raised by the stand-ins for the work functions: what the command would have run, with what."""

    def __init__(self, **what):
        super().__init__(what)
        self.what = what


def recorder(name):
    def record(*args, **kwargs):
        raise Called(name=name, args=args, kwargs=kwargs)

    return record


@pytest.fixture
def no_work(monkeypatch):
    monkeypatch.setattr(hinas.jobs.search, "search", recorder("search"))
    monkeypatch.setattr(hinas.jobs.retrain, "retrain", recorder("retrain"))
    monkeypatch.setattr(hinas.jobs.evaluate, "evaluate_run", recorder("evaluate"))
    monkeypatch.setattr(pipeline, "prepare", recorder("prepare"))
    monkeypatch.setattr(pipeline, "report", recorder("report"))


def expanded_stages(params_file: Path, work: Path) -> tuple[dict, list]:
    """(params, DVC's stages) of dvc.yaml with ``params_file`` as params.yaml, in a scratch DVC repo at ``work``."""
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(params_file, work / "params.yaml")
    Repo.init(str(work), no_scm=True)
    with Repo(str(work)) as repo:
        stages = list(repo.index.stages)
    return yaml.safe_load(params_file.read_text()), stages


def run_cli(argv: list[str], capsys) -> dict:
    """What ``hinas ARGV`` would run; fails the test with the command's own error when it would not start."""
    with pytest.raises(Called) as called:
        code = cli.main(argv)
        pytest.fail(f"hinas {shlex.join(argv)} exited {code} before any work: {capsys.readouterr().err}")
    return called.value.what


def notebook_parameters(path: Path) -> set[str]:
    cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {t.id for node in ast.parse("".join(cell["source"])).body for t in node.targets}


@pytest.mark.parametrize("params_file", ["params.yaml", "params-smoke.yaml"])
def test_every_stage_command_resolves(params_file, tmp_path, monkeypatch, capsys, no_work):
    params, stages = expanded_stages(ROOT / params_file, tmp_path)
    monkeypatch.chdir(tmp_path)
    outs = {str(o.def_path) for s in stages for o in s.outs}
    data = params["data"]
    checked = set()
    for stage in stages:
        deps = {str(d.def_path) for d in stage.deps}
        metrics = {str(o.def_path) for o in stage.outs if o.metric}
        plots = {str(o.def_path) for o in stage.outs if o.plot}
        run_dir = None
        for part in stage.cmd.split("&&"):
            argv = shlex.split(part)
            checked.add(stage.addressing)
            if argv[0] == "hinas":
                what = run_cli(argv[1:], capsys)
                name = what["name"]
                if name == "prepare":
                    cfg, task, out = what["args"]
                    assert cfg.sets(task) and out in outs, stage.addressing
                    continue
                if name == "report":
                    assert f"{params['runs']}/evaluate_denoise" in deps and f"{params['runs']}/evaluate_sr" in deps
                    continue
                cfg, run_dir = what["args"][0], what["args"][1]
                assert what["kwargs"]["overwrite"] and not what["kwargs"]["progress"], stage.addressing
                read = list(cfg.sets) if name == "evaluate" else [cfg.data, getattr(cfg, "val_data", "")]
                named = [s for s in read if s in NAMED_SETS]
                if named:  # read from the pipeline's data folder, gathered by the prepare stage it depends on
                    task = next(t for t in pipeline.TASKS if f"{params['runs']}/data/{t}.json" in deps)
                    assert set(named) <= set(data[task]), (stage.addressing, named, data[task])
                    assert cfg.data_root == data["root"], stage.addressing
                if name == "retrain":
                    assert cfg.genotype in outs and cfg.genotype in deps, stage.addressing
                if name == "evaluate":
                    assert f"{cfg.model}/best.pt" in outs and f"{cfg.model}/best.pt" in deps, stage.addressing
            elif argv[:3] == ["python", "-m", "hinas.studies.pipeline"]:
                args = pipeline.build_parser().parse_args(argv[3:])
                assert args.command == "keep" and args.run == str(run_dir), stage.addressing
                assert f"{args.dest}/metrics.json" in metrics, stage.addressing
                if not stage.addressing.startswith("evaluate"):
                    assert f"{args.dest}/history.json" in plots, stage.addressing
            elif argv[:3] == ["python", "-m", "hinas.studies.results"]:
                args = results.build_parser().parse_args(argv[3:])
                assert args.targets and args.metrics in metrics, stage.addressing
                assert args.runs == params["latency"]["runs"] and args.targets[0][0] == params["latency"]["target_ms"]
                assert results.PROFILES[args.profile].denoise_sets
            elif argv[0] == "papermill":
                assert (ROOT / argv[1]).is_file()
                given = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "-p"}
                assert set(given) <= notebook_parameters(ROOT / argv[1])
                assert given["profile"] in PROFILES
            else:
                assert argv[0] == "mkdir", f"{stage.addressing}: no check for {part!r}"
    assert checked == {s.addressing for s in stages}
    assert {f"prepare@{t}" for t in pipeline.TASKS} <= checked
    assert len(checked) == 7 + 2 * (len(params["sigmas"]) + len(params["scales"]))  # foreach expanded


def test_a_wrong_name_fails_the_check(tmp_path, monkeypatch, capsys, no_work):
    """The check is real: a fetch-style name in the data section, or a section that does not exist, is caught."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["denoise"] = ["bsds500"]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="unknown set.*bsds500.*BSD500-trainval"):
        run_cli(["prepare", "--config", "params.yaml:data", "--task", "denoise", "--out", "x.json"], capsys)
    with pytest.raises(pytest.fail.Exception, match="no section 'search_denoize'"):
        run_cli(["search", "--config", "params.yaml:search_denoize"], capsys)


def test_the_documented_experiment_overrides_resolve(tmp_path, monkeypatch, capsys, no_work):
    """Every ``dvc exp run -S ++SECTION.KEY=VALUE`` in the README and params.yaml names a real setting."""
    text = (ROOT / "README.md").read_text() + (ROOT / "params.yaml").read_text()
    overrides = set(re.findall(r'-S "?\+\+([\w.]+)=([^"`\s]+)', text))
    assert {key for key, _ in overrides} >= {"search_denoise.seed", "search_denoise.space.sharing", "search_denoise.epochs"}
    monkeypatch.chdir(tmp_path)
    for key, value in overrides:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        section, *path = key.split(".")
        node = params[section]
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = yaml.safe_load(value.replace("$seed", "3"))
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cfg = run_cli([section.split("_")[0], "--config", f"params.yaml:{section}"], capsys)["args"][0]
        for k in path:
            cfg = getattr(cfg, k)
        assert cfg == node[path[-1]], key

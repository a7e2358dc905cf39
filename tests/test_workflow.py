"""End to end on the embedded photos: search -> retrain -> evaluate, from Python and from the command line."""

import csv
import json

import pytest
import torch

from hinas.cli import main
from hinas.engine.settings import SearchConfig, TrainConfig, resolve
from hinas.nas.genotype import Genotype
from hinas.nas.network import Network, load_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One smoke search, retrain and evaluation through the CLI, shared by the checks below."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["search", "--preset", "smoke", "--out", str(root / "search"), "--quiet"]) == 0
    assert main(["retrain", "--preset", "smoke", "--genotype", str(root / "search"), "--out", str(root / "retrain"),
                 "--quiet"]) == 0
    assert main(["evaluate", "--preset", "smoke", "--model", str(root / "retrain"), "--set", "save_images=true",
                 "--out", str(root / "eval"), "--quiet"]) == 0
    return root


def test_search_run_directory_holds_every_artefact(runs):
    run = runs / "search"
    for name in ("config.yaml", "log.jsonl", "checkpoint.pt", "genotype.json", "genotype.svg", "genotype.png",
                 "history.json", "alphas.png", "betas.png", "metrics.json"):
        assert (run / name).stat().st_size > 0, name
    cfg = resolve(SearchConfig, "smoke")
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, cfg.epochs + 1))
    assert history[0]["arch_loss"] is None and history[-1]["arch_loss"] is not None  # warm-up, then arch steps
    for h in history:
        assert h["val_psnr"] > 0 and 0 < h["val_ssim"] <= 1 and h["skip_ops"] >= 0 and h["zero_edges"] >= 0
        assert len(h["alpha"]) == cfg.space.layers and len(h["beta"]) == cfg.space.layers
    metrics = json.loads((run / "metrics.json").read_text())
    assert Genotype.load(run / "genotype.json") == Genotype.from_dict(metrics["genotype"])
    assert metrics["convention"]["quantize_uint8"] is True
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == cfg.epochs


def test_arch_parameters_move_only_after_warm_up(runs):
    history = json.loads((runs / "search" / "history.json").read_text())
    uniform = torch.full_like(torch.tensor(history[0]["alpha"]), 1 / 7)
    torch.testing.assert_close(torch.tensor(history[0]["alpha"]), uniform)  # epoch 1: weights only
    assert not torch.allclose(torch.tensor(history[-1]["alpha"]), uniform)


def test_retrain_keeps_the_best_checkpoint_and_reports_size(runs):
    run = runs / "retrain"
    metrics = json.loads((run / "metrics.json").read_text())
    model = load_model(run / "best.pt")
    assert isinstance(model, Network) and model.filters == resolve(TrainConfig, "smoke").filters
    assert metrics["params"] == sum(p.numel() for p in model.parameters()) and metrics["gflops_256"] > 0
    history = json.loads((run / "history.json").read_text())
    assert metrics["val_psnr"] == max(h["val_psnr"] for h in history if h["score"] == max(x["score"] for x in history))
    assert Genotype.load(run / "genotype.json") == Genotype.load(runs / "search" / "genotype.json")


def test_evaluate_writes_csv_json_and_images(runs):
    run = runs / "eval"
    metrics = json.loads((run / "metrics.json").read_text())
    (result,) = metrics["results"]
    assert result["set"] == "embedded-val" and result["sigma"] == 25 and result["images"] == 4
    with open(run / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and abs(sum(float(r["psnr"]) for r in rows) / 4 - result["psnr"]) < 1e-9
    assert len(list((run / "images").rglob("*.png"))) == 4
    assert metrics["convention"]["shave"] == 0 and metrics["convention"]["noise_seeding"]


def test_noisy_baseline_equals_the_input_psnr(tmp_path):
    assert main(["evaluate", "--preset", "smoke", "--model", "noisy", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    (result,) = json.loads((tmp_path / "e" / "metrics.json").read_text())["results"]
    assert result["psnr"] == pytest.approx(result["input_psnr"])
    assert 20 < result["psnr"] < 21.5  # sigma 25 on uint8-quantised noisy images: about 20.2 dB


def test_a_finished_run_is_not_overwritten_unless_asked(runs, capsys):
    assert main(["evaluate", "--preset", "smoke", "--model", "noisy", "--out", str(runs / "eval"), "--quiet"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--preset", "smoke", "--set", "epochz=3"],
         "unknown key(s) 'epochz' (did you mean 'epochs'?); valid keys: amp, arch_lr"),
        (["search", "--preset", "smoke", "--set", "space.layers=0"], "space.layers: must be at least 1"),
        (["search", "--preset", "smoke", "--set", "batch=50"], "search.batch: 50 is larger than"),
        (["search", "--preset", "smoke", "--set", "data=NoSuchSet"], "NoSuchSet"),
        (["retrain", "--preset", "smoke", "--genotype", "missing.json"], "missing.json: cannot read genotype file"),
        (["evaluate", "--model", "bicubic", "--set", "task=denoise"], "baseline 'bicubic' does not apply to task 'denoise'"),
    ],
)
def test_bad_settings_fail_before_work_with_a_clear_message(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_options_and_presets_are_refused_by_the_parser(capsys):
    for argv in (["search", "--presett", "smoke"], ["search", "--preset", "tiny"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "choose from 'paper-denoise', 'paper-sr', 'smoke', 'cpu-demo'" in capsys.readouterr().err


def test_show_prints_and_draws(runs, capsys):
    assert main(["show", str(runs / "search"), "--out", str(runs / "shown")]) == 0
    out = capsys.readouterr().out
    assert "width path: stem ->" in out and "M parameters" in out
    assert (runs / "shown.svg").exists() and (runs / "shown.png").exists()


def test_cpu_search_is_repeatable_bit_for_bit(tmp_path):
    cfg = resolve(SearchConfig, "smoke", overrides=["epochs=2", "arch_start=1"])
    from hinas.jobs.search import search

    a = search(cfg, tmp_path / "a", progress=False)
    b = search(cfg, tmp_path / "b", progress=False)
    assert a.genotype == b.genotype
    assert a.history[-1]["alpha"] == b.history[-1]["alpha"] and a.history[-1]["beta"] == b.history[-1]["beta"]
    assert [h["weight_loss"] for h in a.history] == [h["weight_loss"] for h in b.history]


def test_demo_main_job_prints_where_its_results_are(tmp_path, capsys):
    assert main(["demo", "--preset", "smoke", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    for line, path in (("genotype:", "search/genotype.json"), ("drawing:", "search/genotype.svg"),
                       ("model:", "retrain/best.pt"), ("metrics:", "evaluate/metrics.json")):
        assert f"{line} {tmp_path / 'demo' / path}" in out
        assert (tmp_path / "demo" / path).exists()
    assert f"embedded-val sigma {resolve(TrainConfig, 'smoke').sigma:g}: PSNR" in out  # the preset's noise level


@pytest.mark.parametrize("preset", ["cpu-hour", "cpu-demo"])
def test_main_job_trains_and_tests_on_what_its_preset_names(tmp_path, monkeypatch, preset):
    """cpu-hour searches on BSDS500, retrains on Train400 and is tested on Set12 and BSD68, all at sigma 25, at 2
    threads; cpu-demo stays on the embedded photos (plus Set12 where the data root holds it)."""
    import types

    from hinas.data.images import NAMED_SETS
    from hinas.jobs import demo

    seen = {}
    monkeypatch.setattr(demo, "search", lambda cfg, out, **kw: seen.update(search=cfg) or types.SimpleNamespace(run_dir=out))
    monkeypatch.setattr(demo, "retrain", lambda cfg, out, **kw: seen.update(retrain=cfg) or {"params_m": 0.1})
    monkeypatch.setattr(demo, "evaluate_run", lambda cfg, out, **kw: seen.update(evaluate=cfg) or {"results": []})
    monkeypatch.delenv("HINAS_DATA_ROOT", raising=False)
    demo.main_job(tmp_path / "job", preset)
    found, trained, tested = seen["search"], seen["retrain"], seen["evaluate"]
    assert trained.genotype == str(tmp_path / "job" / "search") and tested.model == str(tmp_path / "job" / "retrain")
    assert tested.sigmas == (trained.sigma,) == (25.0,)
    if preset == "cpu-hour":
        assert (found.data, trained.data, tested.sets) == ("BSD500-train", "Train400", ("Set12", "BSD68"))
        assert {found.data, trained.data, *tested.sets} <= set(NAMED_SETS)
        assert found.sigmas == (25.0,) and found.val_sigma == 25.0
        assert found.threads == trained.threads == tested.threads == 2
        assert trained.minutes > 0 and trained.iterations > 100_000  # a CPU-time budget, not an iteration count
    else:
        assert (found.data, trained.data, tested.sets) == ("embedded-train", "embedded-train", ("embedded-val",))
        assert 0 < trained.minutes <= 15 and trained.iterations == 2000  # a slower CPU trains fewer, not longer


def test_tensorboard_receives_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hinas.jobs.search import search

    search(resolve(SearchConfig, "smoke", overrides=["tensorboard=true", "epochs=2"]), tmp_path / "s", progress=False)
    events = EventAccumulator(str(tmp_path / "s" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"epoch/weight_loss", "epoch/val_psnr", "epoch/skip_ops"} <= set(tags)
    assert [e.step for e in events.Scalars("epoch/val_psnr")] == [1, 2]

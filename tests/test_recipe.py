"""Retraining recipes: optimisers, learning-rate schedules and a budget in minutes instead of iterations."""

import json
from itertools import count

import pytest
import torch
from conftest import uniform_genotype

import hinas.jobs.retrain
from hinas.engine.checkpoint import read_checkpoint
from hinas.engine.losses import ONECYCLE_WARMUP, retrain_lr, weight_optimizer
from hinas.engine.rundir import CHECKPOINT
from hinas.engine.settings import SearchConfig, TrainConfig, resolve
from hinas.errors import ConfigError
from hinas.jobs.retrain import TIMED_STEPS, WARM_STEPS, retrain

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def test_schedules_start_peak_and_end_where_they_should():
    lr, total = 0.1, 1000
    assert retrain_lr(0, total, lr, "poly", 0.9) == lr
    assert retrain_lr(500, total, lr, "poly", 0.9) == pytest.approx(lr * 0.5 ** 0.9)
    assert retrain_lr(0, total, lr, "cosine", 0.9) == lr
    assert retrain_lr(500, total, lr, "cosine", 0.9) == pytest.approx(lr / 2)
    assert retrain_lr(0, total, lr, "onecycle", 0.9) == pytest.approx(lr / 25)
    peak = round(ONECYCLE_WARMUP * total)
    assert retrain_lr(peak, total, lr, "onecycle", 0.9) == pytest.approx(lr)
    values = [retrain_lr(s, total, lr, "onecycle", 0.9) for s in range(total + 1)]
    assert max(values) == pytest.approx(lr) and values.index(max(values)) == peak
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))  # rises, then falls
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))
    for schedule in ("poly", "cosine", "onecycle"):
        assert retrain_lr(total, total, lr, schedule, 0.9) == pytest.approx(0, abs=1e-12)
        assert retrain_lr(total + 5, total, lr, schedule, 0.9) == pytest.approx(0, abs=1e-12)  # past the end: stays at 0
    with pytest.raises(ValueError, match="expected poly, cosine or onecycle"):
        retrain_lr(0, total, lr, "step", 0.9)


def test_optimisers_are_the_named_ones_with_the_given_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = weight_optimizer(params, "sgd", 0.1, 0.8, 1e-4)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 1e-4
    assert type(weight_optimizer(params, "adam", 1e-3, 0.9, 0.0)) is torch.optim.Adam
    adamw = weight_optimizer(params, "adamw", 1e-3, 0.9, 0.01)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="expected sgd, adam or adamw"):
        weight_optimizer(params, "lion", 1e-3, 0.9, 0.0)


def test_recipe_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="optimizer"):
        resolve(TrainConfig, "smoke", overrides=["optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="schedule"):
        resolve(TrainConfig, "smoke", overrides=["schedule=linear"])
    with pytest.raises(ConfigError, match="minutes"):
        resolve(TrainConfig, "smoke", overrides=["minutes=-1"])


@pytest.fixture
def genotype(tmp_path):
    return uniform_genotype(resolve(SearchConfig, "smoke").space, "conv_3x3", (0, 1)).save(tmp_path / "genotype.json")


def test_retrain_follows_the_chosen_optimiser_and_schedule(genotype, tmp_path):
    cfg = resolve(TrainConfig, "smoke", overrides=[f"genotype={genotype}", "optimizer=adam", "schedule=onecycle",
                                                   "lr=0.01", "iterations=10", "val_every=1"])
    metrics = retrain(cfg, tmp_path / "r", progress=False)
    assert (metrics["optimizer"], metrics["schedule"], metrics["iterations"]) == ("adam", "onecycle", 10)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    # each record's lr is the one the last step before it used: step it - 1 of 10
    assert [h["lr"] for h in history] == pytest.approx([retrain_lr(h["iteration"] - 1, 10, 0.01, "onecycle", 0.9)
                                                        for h in history])
    adam_state = read_checkpoint(tmp_path / "r" / CHECKPOINT, "retrain")["optimizers"]["weights"]["state"]
    assert "exp_avg" in next(iter(adam_state.values()))


def fake_clock(monkeypatch, seconds_per_step: float) -> None:
    """The retraining job's clock reads ``seconds_per_step * TIMED_STEPS`` more at the end of the timed steps."""
    ticks = count()
    monkeypatch.setattr(hinas.jobs.retrain, "process_time", lambda: next(ticks) * seconds_per_step * TIMED_STEPS)


def test_a_minutes_budget_fixes_the_iterations_from_the_measured_step_time(genotype, tmp_path, monkeypatch):
    fake_clock(monkeypatch, 0.5)  # 0.5 s a step: 0.5 minutes hold 60 steps
    cfg = resolve(TrainConfig, "smoke", overrides=[f"genotype={genotype}", "minutes=0.5", "iterations=1000", "val_every=20"])
    metrics = retrain(cfg, tmp_path / "r", progress=False)
    assert metrics["iterations"] == 60 and metrics["step_seconds"] == pytest.approx(0.5)
    progress = read_checkpoint(tmp_path / "r" / CHECKPOINT, "retrain")["progress"]
    assert (progress["planned"], progress["iteration"]) == (60, 60)  # a resumed run reads the plan back
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert [h["iteration"] for h in history] == [20, 40, 60]
    assert history[-1]["lr"] == pytest.approx(retrain_lr(59, 60, cfg.lr, "poly", cfg.lr_power))
    assert WARM_STEPS + TIMED_STEPS < 60


def test_iterations_stay_the_ceiling_of_a_minutes_budget(genotype, tmp_path, monkeypatch):
    fake_clock(monkeypatch, 0.001)
    cfg = resolve(TrainConfig, "smoke", overrides=[f"genotype={genotype}", "minutes=60", "iterations=30", "val_every=10"])
    assert retrain(cfg, tmp_path / "r", progress=False)["iterations"] == 30

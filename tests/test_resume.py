"""Interrupted runs resume exactly; foreign settings, code and checkpoints are refused; numerical faults never land.

The kill tests run ``python -m hinas`` as a subprocess, stop it part-way (SIGKILL from outside, or a signal
sent from inside a checkpoint write), resume it in this process and compare everything but wall-clock
times with an uninterrupted run of the same settings, bit for bit.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import small_space, uniform_genotype

import hinas.engine.checkpoint
import hinas.engine.loop
import hinas.jobs.retrain
import hinas.jobs.search
from hinas.cli import main
from hinas.engine.checkpoint import read_checkpoint
from hinas.engine.guard import checked_step
from hinas.engine.losses import search_lr
from hinas.engine.rundir import CHECKPOINT
from hinas.engine.settings import SearchConfig, TrainConfig, resolve
from hinas.errors import CollapseError, GenotypeError, Interrupted, NonFiniteError
from hinas.jobs.retrain import retrain
from hinas.jobs.search import search
from hinas.nas.genotype import Genotype, derive

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

SEARCH = ["--preset", "smoke", "--set", "patches_per_image=2", "--set", "checkpoint_every=1"]
"""2 epochs of 5 steps (arch steps in the second), a checkpoint after every step: checkpoint n <= 5 is epoch 1 step n - 1."""
RETRAIN = ["--preset", "smoke", "--set", "iterations=6", "--set", "val_every=3", "--set", "checkpoint_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Children compute on one thread, as this process does under the ``one_thread`` fixture."""

SIGNAL_IN_WRITE = """
import os, signal, sys
import hinas.files as runtime
from hinas.cli import main

sig, nth = getattr(signal, sys.argv[1]), int(sys.argv[2])
real, count = runtime.atomic_write_bytes, 0

def write(path, data):  # the nth checkpoint write gets the signal half-way through its temporary file
    global count
    if path.name == "checkpoint.pt":
        count += 1
        if count == nth:
            path.with_name(".checkpoint.pt.tmp").write_bytes(bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), sig)
    real(path, data)

runtime.atomic_write_bytes = write
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """Uninterrupted runs with the settings the kill tests use."""
    root = tmp_path_factory.mktemp("reference")
    assert main(["search", *SEARCH, "--out", str(root / "search"), "--quiet"]) == 0
    assert main(["retrain", *RETRAIN, "--genotype", str(root / "search"), "--out", str(root / "retrain"), "--quiet"]) == 0
    return root


def spawn(args: list[str], signal_in_write: tuple[str, int] | None = None) -> subprocess.Popen:
    code = ["-c", SIGNAL_IN_WRITE, *map(str, signal_in_write)] if signal_in_write else ["-m", "hinas"]
    return subprocess.Popen([sys.executable, *code, *args, "--quiet"], env=ENV, stderr=subprocess.PIPE, text=True)


def same_run(a: Path, b: Path) -> None:
    """Equal bit for bit but for wall-clock and CPU times: history, metrics, genotype, final weights, optimisers, scaler, RNGs."""
    def without_time(obj):
        if isinstance(obj, dict):
            return {k: without_time(v) for k, v in obj.items() if k not in ("seconds", "elapsed", "cpu_seconds", "cpu_elapsed")}
        return [without_time(v) for v in obj] if isinstance(obj, list) else obj

    for name in ("history.json", "metrics.json", "genotype.json"):
        assert without_time(json.loads((a / name).read_text())) == without_time(json.loads((b / name).read_text())), name
    sa, sb = (torch.load(d / CHECKPOINT, weights_only=True) for d in (a, b))
    for part in ("model", "optimizers", "scaler", "rng", "progress"):
        flat_a, flat_b = _flatten(without_time(sa[part])), _flatten(without_time(sb[part]))
        assert flat_a.keys() == flat_b.keys()
        for key, value in flat_a.items():
            assert torch.equal(value, flat_b[key]) if isinstance(value, torch.Tensor) else value == flat_b[key], (part, key)


def _flatten(obj, prefix=""):
    if isinstance(obj, (dict, list, tuple)):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        return {k: v for key, value in items for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix: obj}


def progress_of(run: Path, kind: str = "search") -> dict:
    return read_checkpoint(run / CHECKPOINT, kind)["progress"]


def test_search_killed_with_sigkill_resumes_bit_for_bit(reference, tmp_path):
    run = tmp_path / "run"
    proc = spawn(["search", *SEARCH, "--out", str(run)])
    log = run / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and '"event": "epoch"' in log.read_text()):  # part-way: the first epoch is done
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL and not (run / "metrics.json").exists()
    stopped = progress_of(run)
    assert (1, 0) < (stopped["epoch"], stopped["step"]) < (3, 0)  # beyond the start, before the end

    assert main(["search", "--resume", str(run), "--quiet"]) == 0
    same_run(reference / "search", run)
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("resume") == 1 and events[-1] == "end"


@pytest.mark.parametrize("sig, exit_code, saved_step", [("SIGTERM", 128 + signal.SIGTERM, 3), ("SIGKILL", -signal.SIGKILL, 2)])
def test_search_signalled_during_a_checkpoint_write_resumes_bit_for_bit(reference, tmp_path, sig, exit_code, saved_step):
    run = tmp_path / "run"
    proc = spawn(["search", *SEARCH, "--out", str(run)], signal_in_write=(sig, 4))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_code, err
    partial = run / f".{CHECKPOINT}.tmp"
    if sig == "SIGTERM":  # the write finished, then the run stopped at the step boundary
        assert f"stopped by SIGTERM at epoch 1 step 3; checkpoint {run / CHECKPOINT} is complete" in err
        assert not partial.exists()
    else:  # killed half-way through the temporary file: the previous checkpoint is intact
        assert partial.exists()
    assert (progress_of(run)["epoch"], progress_of(run)["step"]) == (1, saved_step)

    assert main(["search", "--resume", str(run), "--quiet"]) == 0
    same_run(reference / "search", run)
    assert not partial.exists()


def test_retrain_interrupted_with_sigint_resumes_bit_for_bit(reference, tmp_path):
    run = tmp_path / "run"
    proc = spawn(["retrain", *RETRAIN, "--genotype", str(reference / "search"), "--out", str(run)], signal_in_write=("SIGINT", 3))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert progress_of(run, "retrain")["iteration"] == 2

    assert main(["retrain", "--resume", str(run), "--quiet"]) == 0
    same_run(reference / "retrain", run)
    best = [torch.load(d / "best.pt", weights_only=True)["state_dict"] for d in (reference / "retrain", run)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def interrupt_at_step(monkeypatch, module, n: int) -> None:
    """SIGTERM this process from inside the ``n``-th optimiser step of ``module``'s loop."""
    real, calls = module.checked_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "checked_step", step)


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A smoke search stopped by SIGTERM at epoch 1 step 1 (in this process)."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, hinas.engine.loop, 1)
        with pytest.raises(Interrupted, match="stopped by SIGTERM at epoch 1 step 1"):
            search(resolve(SearchConfig, "smoke"), run, progress=False)
    return run


def test_an_fp16_search_resumes_with_its_grad_scaler(tmp_path, monkeypatch):
    cfg = resolve(SearchConfig, "smoke", overrides=["amp=fp16", "device=cpu"])
    search(cfg, tmp_path / "reference", progress=False)
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, hinas.engine.loop, 3)  # epoch 2, after its first arch step
        with pytest.raises(Interrupted):
            search(cfg, tmp_path / "run", progress=False)
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT, "search")["scaler"]["scale"] == 65536.0
    search(cfg, tmp_path / "run", resume=True, progress=False)
    same_run(tmp_path / "reference", tmp_path / "run")
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["scaler"]["_growth_tracker"] > 0


def test_resume_refuses_other_settings_or_code_unless_forced(interrupted, capsys, monkeypatch):
    run = str(interrupted)
    assert main(["search", "--resume", run, "--preset", "smoke", "--set", "epochs=3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "other settings or code; differing keys (run -> now):\n  config.epochs: 2 -> 3\n" in err and "--force" in err

    real = hinas.engine.checkpoint.code_version()
    monkeypatch.setattr(hinas.engine.checkpoint, "code_version", lambda: {**real, "source": "0123456789abcdef"})
    assert main(["search", "--resume", run, "--quiet"]) == 2
    assert f"code.source: {real['source']!r} -> '0123456789abcdef'" in capsys.readouterr().err
    assert progress_of(interrupted)["step"] == 1  # refused before anything changed

    assert main(["search", "--resume", run, "--force", "--quiet"]) == 0
    log = [json.loads(line) for line in (interrupted / "log.jsonl").read_text().splitlines()]
    assert [r["position"] for r in log if r["event"] == "resume"] == ["epoch 1 step 1"]


def test_a_run_resumes_on_another_machine_that_computes_alike_but_not_in_another_precision(interrupted, capsys,
                                                                                             monkeypatch):
    first = read_checkpoint(interrupted / CHECKPOINT, "search")["facts"]
    assert first["machine"] == hinas.engine.loop.machine(torch.device("cpu")) and first["threads"] >= 1
    monkeypatch.setattr(hinas.engine.loop, "precision_name", lambda dtype: "bf16")
    assert main(["search", "--resume", str(interrupted), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.split("would resume with ")[1].split(";")[0] == "precision float32 -> bf16"  # the machine is no reason
    monkeypatch.undo()
    monkeypatch.setattr(hinas.engine.loop, "machine", lambda device: "Another CPU (AVX2)")
    assert main(["search", "--resume", str(interrupted), "--quiet"]) == 0
    assert json.loads((interrupted / "metrics.json").read_text())["machine"] == "Another CPU (AVX2)"


def test_a_checkpoint_from_another_search_space_is_refused(interrupted, capsys):
    run = str(interrupted)
    other = ["search", "--resume", run, "--preset", "smoke", "--set", "space.filters=3", "--quiet"]
    assert main(other) == 2
    assert "config.space.filters: 2 -> 3" in capsys.readouterr().err
    assert main(other + ["--force"]) == 2
    assert "does not fit this search (written for another search space or network?)" in capsys.readouterr().err
    assert "filters: 2" in (interrupted / "config.yaml").read_text()  # the run is left as it was
    assert main(["search", "--resume", run, "--quiet"]) == 0


def test_run_directories_refuse_what_would_lose_work(interrupted, capsys):
    run = str(interrupted)
    assert main(["search", "--preset", "smoke", "--out", run, "--quiet"]) == 2
    assert f"holds an interrupted run ({CHECKPOINT}); continue it with --resume {run}" in capsys.readouterr().err
    assert main(["search", "--resume", run, "--overwrite", "--quiet"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main(["search", "--resume", run, "--out", run + "-elsewhere", "--quiet"]) == 2
    assert main(["search", "--resume", run, "--quiet"]) == 0
    assert main(["search", "--resume", run, "--quiet"]) == 2
    assert "already holds a finished run; nothing to resume" in capsys.readouterr().err


class NaNGradient(torch.autograd.Function):
    """Adds zero to a loss and NaN to its gradient: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.sum() * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, math.nan)


def test_a_non_finite_loss_or_gradient_never_reaches_the_parameters():
    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(4, 3)
    checked_step(lambda: model(x).square().mean(), opt, scaler, params, "first step")
    weights = [p.detach().clone() for p in params]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for bad in (lambda: model(x).mean() * math.nan, lambda: model(x).square().mean() + NaNGradient.apply(model(x))):
        retried = []
        with pytest.raises(NonFiniteError, match="non-finite second step"):
            checked_step(bad, opt, scaler, params, "second step", retries=2, on_retry=retried.append)
        assert len(retried) == 2 and "attempt 3 of 3" in retried[-1]
        assert all(torch.equal(p, w) for p, w in zip(params, weights))
        assert all(torch.equal(opt.state[p]["momentum_buffer"], m) for p, m in zip(params, momentum))


def test_a_fault_that_the_same_step_does_not_repeat_is_computed_again_and_applied_once():
    """What oneDNN's rare bf16 gradient of 1e30 looks like to the guard: bad once, fine when computed again."""
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3)
    calls, retried = [], []

    def compute():
        calls.append(1)
        loss = model(x).square().mean()
        return loss + NaNGradient.apply(model(x)) if len(calls) == 1 else loss

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    checked_step(compute, opt, scaler, list(model.parameters()), "step", retries=1, on_retry=retried.append)
    assert len(calls) == 2 and len(retried) == 1 and "gradient norm nan" in retried[0]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    checked_step(lambda: reference(x).square().mean(), ref_opt, scaler, list(reference.parameters()), "step")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))  # one step, not two


def fault_at_call(monkeypatch, module, n: int, kind: str, times: int = 2) -> None:
    """Make the ``n``-th loss computed in ``module`` NaN (``loss``) or give it a NaN gradient (``gradient``), and the
    ``times - 1`` that follow: by default the step and its one recomputation (``step_retries``), a fault that persists."""
    real, calls = module.restoration_loss, []

    def loss(pred, *args, **kwargs):
        calls.append(1)
        value = real(pred, *args, **kwargs)
        if not n <= len(calls) < n + times:
            return value
        return value * math.nan if kind == "loss" else value + NaNGradient.apply(pred)

    monkeypatch.setattr(module, "restoration_loss", loss)


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_search_rolls_back_a_nan_loss_with_smaller_learning_rates(tmp_path, monkeypatch):
    fault_at_call(monkeypatch, hinas.engine.loop, 4, "loss")  # epoch 2, step 0: the weight step after the first arch step
    cfg = resolve(SearchConfig, "smoke")
    result = search(cfg, tmp_path / "s", progress=False)
    log = events(tmp_path / "s")
    assert [r["event"] for r in log if r["event"] in ("nonfinite", "rollback")] == ["nonfinite", "rollback"]
    assert next(r for r in log if r["event"] == "rollback")["position"] == "epoch 2 step 0"
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["rollbacks"] == 1
    steps = 2  # smoke: 5 weight images, batch 2
    last_of_epoch_2 = search_lr(1 + (steps - 1) / steps, cfg.epochs, cfg.lr, cfg.lr_min, cfg.lr_cycle, cfg.lr_power)
    assert result.history[1]["lr"] == 0.5 * last_of_epoch_2
    assert all(math.isfinite(p) for row in result.history[-1]["alpha"] for level in row for edge in level for p in edge)
    assert Genotype.load(tmp_path / "s" / "genotype.json") == result.genotype


def test_search_stops_on_a_nan_gradient_when_asked_and_writes_no_genotype_from_it(tmp_path, monkeypatch, capsys):
    fault_at_call(monkeypatch, hinas.engine.loop, 3, "gradient")  # epoch 2's first arch step
    run = tmp_path / "s"
    assert main(["search", "--preset", "smoke", "--set", "on_nonfinite=stop", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"non-finite arch step at epoch 2 step 0: loss [0-9.]+, gradient norm nan", err)
    assert "stopped (on_nonfinite=stop). The step was not applied" in err
    assert f"{run / CHECKPOINT} still holds the last good state (epoch 2 step 0)" in err
    assert not (run / "metrics.json").exists()
    assert Genotype.load(run / "genotype.json").meta == {"epoch": 1}  # the last genotype is from before the fault
    saved = read_checkpoint(run / CHECKPOINT, "search")
    assert torch.equal(saved["model"]["alpha"], torch.zeros_like(saved["model"]["alpha"]))  # untouched by the fault


def test_retrain_rolls_back_and_stops_after_max_rollbacks(tmp_path, monkeypatch):
    path = uniform_genotype(resolve(SearchConfig, "smoke").space, "conv_3x3", (0, 1)).save(tmp_path / "genotype.json")
    fault_at_call(monkeypatch, hinas.engine.loop, 2, "loss")
    metrics = retrain(resolve(TrainConfig, "smoke", overrides=[f"genotype={path}"]), tmp_path / "r", progress=False)
    assert metrics["rollbacks"] == 1
    fault_at_call(monkeypatch, hinas.engine.loop, 2, "loss")
    with pytest.raises(NonFiniteError, match=r"stopped \(0 rollbacks already \(max_rollbacks\)\)"):
        retrain(resolve(TrainConfig, "smoke", overrides=[f"genotype={path}", "max_rollbacks=0"]), tmp_path / "r0", progress=False)


def test_retrain_computes_a_one_off_fault_again_and_ends_as_if_it_never_happened(tmp_path, monkeypatch):
    path = uniform_genotype(resolve(SearchConfig, "smoke").space, "conv_3x3", (0, 1)).save(tmp_path / "genotype.json")
    cfg = resolve(TrainConfig, "smoke", overrides=[f"genotype={path}"])
    retrain(cfg, tmp_path / "clean", progress=False)
    fault_at_call(monkeypatch, hinas.engine.loop, 2, "gradient", times=1)
    metrics = retrain(cfg, tmp_path / "r", progress=False)
    assert metrics["rollbacks"] == 0
    faults = [r for r in events(tmp_path / "r") if r["event"] in ("retried", "nonfinite", "rollback")]
    assert [r["event"] for r in faults] == ["retried"]
    assert faults[0]["message"].startswith("non-finite step at iteration 1: loss")
    best = [torch.load(d / "best.pt", weights_only=True)["state_dict"] for d in (tmp_path / "clean", tmp_path / "r")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_no_genotype_is_derived_from_nan_alphas():
    space = small_space(layers=2, nodes=2)
    alpha = torch.full((space.layers, 1, space.num_edges, len(space.ops)), 1 / len(space.ops))
    beta = torch.full((space.layers, space.levels, 3), 1 / 3)
    derive(space, alpha, beta)
    alpha[1, 0, 2, 3] = math.nan
    with pytest.raises(GenotypeError, match="NaN or infinite"):
        derive(space, alpha, beta)


def test_collapse_guard_stops_the_search_when_skips_take_over(tmp_path):
    skips_only = ["space.ops=[identity, zero]", "epochs=4", "collapse_skip_limit=8"]  # smoke: 2 layers x 2 nodes x 2 edges
    result = search(resolve(SearchConfig, "smoke", overrides=skips_only), tmp_path / "s", progress=False)
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["stopped_early"] == "collapse: 8 skip ops at epoch 2 (collapse_skip_limit 8)"
    assert metrics["epochs_run"] == 2 and result.best_epoch == 1  # epoch 1 is before arch_start: not checked
    assert [h["skip_ops"] for h in result.history] == [8, 8]
    with pytest.raises(CollapseError, match="before any genotype could be kept"):
        search(resolve(SearchConfig, "smoke", overrides=skips_only + ["arch_start=1"]), tmp_path / "t", progress=False)

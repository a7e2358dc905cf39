"""Data-parallel runs: two gloo processes under torchrun on CPU against one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hinas.cli import main
from hinas.engine.distributed import Context, GlobalBatchNorm2d, GlobalScaledBatchNorm, RankBatches
from hinas.engine.settings import SearchConfig
from hinas.errors import ConfigError
from hinas.nas.genotype import Genotype
from hinas.nas.space import preset
from hinas.nas.supercell import ScaledBatchNorm
from hinas.nas.supernet import Supernet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ARCH_ATOL = 5e-5
"""Alphas and betas after the smoke search, 1 vs 2 processes. Measured: 3.2e-6 (alpha), 5.5e-6 (beta).
They differ more than the weights because Adam's first steps are about lr * sign(gradient): a gradient
component near zero turns a rounding-level difference into a visible one. For scale, per-rank BatchNorm
statistics instead of global ones put them 4e-3 apart."""

WEIGHT_ATOL = 5e-5
"""Weights and BatchNorm buffers after the smoke search or retrain, 1 vs 2 processes. Measured: 3.6e-7 with NCHW
convolutions, 1.6e-5 since retraining runs channels_last on the CPU (oneDNN's blocked kernels sum in another order
at batch 1 than at batch 2). Per-rank BatchNorm statistics instead of global ones put them 4e-3 apart."""

SMOKE = ["--preset", "smoke", "--set", "device=cpu", "--set", "amp=off", "--set", "val_crop=16", "--quiet"]
"""float32 throughout: these runs check the mathematics of data parallelism, which bf16 rounding would hide."""


def torchrun(*args: str, scratch) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 -m hinas ARGS``, temporary files kept in ``scratch``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hinas", *args]
    done = subprocess.run(cmd, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke search and retrain, each in one process and in two; both retrains start from the one-process genotype."""
    root = tmp_path_factory.mktemp("dist")
    scratch = root / "tmp"
    scratch.mkdir()
    assert main(["search", *SMOKE, "--out", str(root / "search1")]) == 0
    torchrun("search", *SMOKE, "--out", str(root / "search2"), scratch=scratch)
    genotype = ["--genotype", str(root / "search1")]
    assert main(["retrain", *SMOKE, *genotype, "--out", str(root / "retrain1")]) == 0
    torchrun("retrain", *SMOKE, *genotype, "--out", str(root / "retrain2"), scratch=scratch)
    return root


def state(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def assert_close_states(one: dict, two: dict, arch_atol: float = ARCH_ATOL) -> None:
    assert one.keys() == two.keys()
    for name in one:
        atol = arch_atol if name in ("alpha", "beta") else WEIGHT_ATOL
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=atol, msg=lambda detail, name=name: f"{name}: {detail}")


def test_ranks_of_a_search_hold_identical_replicas_and_derive_one_genotype(runs):
    assert SearchConfig().supernet == "fused"  # so these runs check the fused cell's global-batch BatchNorm
    replicas = json.loads((runs / "search2" / "replicas.json").read_text())
    rank0, rank1 = replicas["replicas"]
    assert replicas["world_size"] == 2 and (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["state_sha256"] == rank1["state_sha256"]  # every weight, alpha, beta and BN buffer, bit for bit
    assert rank0["genotype"] == rank1["genotype"] and rank0["best_epoch"] == rank1["best_epoch"]
    assert Genotype.from_dict(rank0["genotype"]) == Genotype.load(runs / "search2" / "genotype.json")
    assert not list((runs / "tmp").glob("hinas-rank*")), "rank 1's scratch run directory was left behind"


def test_two_process_search_matches_one_process_with_the_same_global_batch(runs):
    assert_close_states(state(runs / "search1"), state(runs / "search2"))
    one, two = (json.loads((runs / r / "history.json").read_text()) for r in ("search1", "search2"))
    for a, b in zip(one, two, strict=True):
        assert b["weight_loss"] == pytest.approx(a["weight_loss"], rel=1e-5)
        assert b["val_psnr"] == pytest.approx(a["val_psnr"], abs=1e-4)


def test_two_process_retrain_matches_one_process_and_its_ranks_agree(runs):
    rank0, rank1 = json.loads((runs / "retrain2" / "replicas.json").read_text())["replicas"]
    assert rank0["state_sha256"] == rank1["state_sha256"] and rank0["best_iteration"] == rank1["best_iteration"]
    assert_close_states(state(runs / "retrain1"), state(runs / "retrain2"))
    one, two = (json.loads((runs / r / "metrics.json").read_text()) for r in ("retrain1", "retrain2"))
    assert two["val_psnr"] == pytest.approx(one["val_psnr"], abs=1e-4) and two["best_iteration"] == one["best_iteration"]
    assert not (runs / "retrain1" / "replicas.json").exists()  # one process: nothing to compare


def test_rank_batches_split_every_global_batch_of_the_stream():
    single = list(RankBatches(13, 6))
    assert single == [list(range(0, 6)), list(range(6, 12))]  # the incomplete last batch is dropped
    for world in (2, 3):
        shares = [list(RankBatches(13, 6, rank, world)) for rank in range(world)]
        assert [sum(step, []) for step in zip(*shares)] == single
    with pytest.raises(ConfigError, match="does not split evenly over 4 processes"):
        RankBatches(13, 6, 0, 4)


@pytest.fixture
def group_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("affine", [True, False])
def test_global_batchnorm_computes_what_batchnorm_computes(group_of_one, affine):
    """With one rank the global batch is the local one, so every output, gradient and running buffer must match."""
    reference = nn.BatchNorm2d(5, affine=affine)
    if affine:
        nn.init.uniform_(reference.weight, 0.5, 1.5)
        nn.init.uniform_(reference.bias, -0.5, 0.5)
    bn = GlobalBatchNorm2d(5, affine=affine)
    bn.load_state_dict(reference.state_dict())
    for _ in range(2):
        x = (torch.randn(3, 5, 6, 7) * 2 + 3).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        upstream = torch.randn(3, 5, 6, 7)
        (reference(x) * upstream).sum().backward()
        (bn(x2) * upstream).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, msg=name)
    if affine:
        torch.testing.assert_close(bn.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-5)
    bn.eval(), reference.eval()
    torch.testing.assert_close(bn(x.detach()), reference(x.detach()))


@pytest.mark.parametrize("leaky", [False, True])
def test_global_scaled_batchnorm_computes_what_scaled_batchnorm_computes(group_of_one, leaky):
    """The fused cell's BN (scale given per call, or followed by LeakyReLU) over a global batch of one rank."""
    reference, bn = ScaledBatchNorm(5), GlobalScaledBatchNorm(5)
    for _ in range(2):
        x = (torch.randn(3, 5, 6, 7) * 2 + 3).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        scale = torch.rand(5, requires_grad=True)
        scale2 = scale.detach().clone().requires_grad_()
        upstream = torch.randn(3, 5, 6, 7)
        outs = (reference.leaky(x), bn.leaky(x2)) if leaky else (reference(x, scale), bn(x2, scale2))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        (outs[0] * upstream).sum().backward()
        (outs[1] * upstream).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
        if not leaky:
            torch.testing.assert_close(scale2.grad, scale.grad, rtol=1e-4, atol=1e-4)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, msg=name)


def test_replicas_of_a_fused_supernet_normalise_over_the_global_batch(group_of_one):
    net = Supernet(preset("paper-denoise").replace(layers=2, nodes=2))
    kinds = {type(m) for m in net.modules()}
    assert ScaledBatchNorm in kinds and nn.BatchNorm2d in kinds
    before = net.state_dict()
    Context(world_size=2).replicate(net)  # world_size > 1 swaps; the group of one serves the broadcasts
    kinds = {type(m) for m in net.modules()}
    assert {ScaledBatchNorm, nn.BatchNorm2d}.isdisjoint(kinds) and {GlobalScaledBatchNorm, GlobalBatchNorm2d} <= kinds
    torch.testing.assert_close(net.state_dict(), before, rtol=0, atol=0)


def torchrun_fault(fault: str, *args: str, scratch) -> subprocess.CompletedProcess:
    """Two gloo ranks running ``tests/dist_faults.py`` (hinas with ``fault`` injected on one rank); never hangs the suite."""
    script = os.path.join(os.path.dirname(__file__), "dist_faults.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    env = {**os.environ, "TMPDIR": str(scratch), "HINAS_TEST_FAULT": fault}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


SEARCH_4 = ["search", *SMOKE, "--set", "epochs=2", "--set", "patches_per_image=4"]
"""A smoke search of 2 epochs of 10 steps each (5 images x 4 patches, batch 2), so that faults land mid-epoch."""


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_and_the_run_resumes(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "search"
    stopped = torchrun_fault("signal:1:5", *SEARCH_4, "--out", str(run), scratch=scratch)
    assert stopped.returncode != 0, "a SIGTERM on rank 1 alone did not stop the run"
    events = _log(run)
    interrupted = [e for e in events if e["event"] == "interrupted"]
    assert [e["position"] for e in interrupted] == ["epoch 1 step 5"], events[-3:]
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]
    assert (saved["epoch"], saved["step"]) == (1, 5)  # rank 0 checkpointed the step at which rank 1 was signalled
    torchrun("search", "--resume", str(run), "--quiet", scratch=scratch)  # check_replicas: the ranks still agree
    assert (run / "metrics.json").is_file()


def test_a_nonfinite_step_on_one_rank_right_after_resume_rolls_every_rank_back(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "search"
    stopped = torchrun_fault("signal:0:3", *SEARCH_4, "--out", str(run), scratch=scratch)
    assert stopped.returncode != 0
    resumed = torchrun_fault("nan:1:1:2", "search", "--resume", str(run), "--quiet", scratch=scratch)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    events = _log(run)
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["position"] == "epoch 1 step 3", events
    assert json.loads((run / "metrics.json").read_text())["rollbacks"] == 1
    replicas = json.loads((run / "replicas.json").read_text())["replicas"]
    assert replicas[0]["state_sha256"] == replicas[1]["state_sha256"]


def test_the_nonfinite_decision_is_taken_by_every_rank(group_of_one):
    """Under fp16 the scaler owns gradient overflow, so a NaN loss on one rank alone is seen by that rank only:
    the decision must be all-reduced. A stand-in for the other rank's verdict shows it is consulted."""
    from hinas.engine.guard import checked_step
    from hinas.errors import NonFiniteError

    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    other_rank_bad = lambda mine: True  # noqa: E731
    with pytest.raises(NonFiniteError):
        checked_step(lambda: (w * 2).sum(), opt, scaler, [w], "step", any_rank=other_rank_bad)
    assert torch.equal(w.detach(), torch.ones(3)), "a step was applied although another rank found it non-finite"
    assert Context().any_rank(True) and not Context().any_rank(False)

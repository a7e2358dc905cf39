"""Latency-aware search: the table and its validity checks, the expected latency, and the latency term's effect."""

import json
import math

import pytest
import torch
from conftest import small_space

from hinas.cli import main
from hinas.engine.settings import SearchConfig, resolve
from hinas.errors import ConfigError
from hinas.infer import latency_table
from hinas.jobs.search import SearchJob, latency_meta
from hinas.nas.baselines import DnCNN
from hinas.nas.genotype import derive, random_genotype
from hinas.nas.latency import FIXED_PARTS, LatencyTable, expected_latency, network_latency, random_of_latency, scaler_pairs
from hinas.nas.ops import get_op
from hinas.nas.space import MOVES, preset
from hinas.nas.supernet import Supernet
from hinas.viz.render import describe

CPU = torch.device("cpu")


def synthetic(space, env=None, slow=None, filters=None):
    """A table with plausible, distinct entries (cost grows with width and kernel); ``slow`` costs 100x."""
    sp = space.replace(filters=filters or space.filters)
    cost = {"conv_3x3": 9, "sep_conv_3x3": 4, "sep_conv_5x5": 6, "dil_conv_3x3": 9, "dil_conv_5x5": 25, "identity": 0}
    ops = {op: tuple(0.01 * cost[op] * sp.channels(k) * (100 if op == slow else 1) for k in range(sp.levels))
           for op in sp.ops if not get_op(op).is_zero}
    scalers = {key: 0.001 * math.prod(map(int, key.split("->"))) for key in scaler_pairs(sp)}
    return LatencyTable(sp, ops, tuple(0.5 + k for k in range(sp.levels)), scalers,
                        tuple(3.0 + 0.1 * k for k in range(sp.levels)), {p: 1.0 + i for i, p in enumerate(FIXED_PARTS)},
                        env or {}, {})


def one_hot(genotype, lwas_layers=True):
    """Alpha and beta probabilities that derive exactly ``genotype``: kept edges one-hot on their op, the others on zero."""
    space = genotype.space
    alpha = torch.zeros(space.layers, 1, space.num_edges, len(space.ops), dtype=torch.float64)
    alpha[..., space.ops.index("zero")] = 1
    for layer, cell in enumerate(genotype.cells):
        for node, edges in enumerate(cell):
            for op, state in edges:
                e = space.edge_index(node, state)
                alpha[layer, 0, e] = 0
                alpha[layer, 0, e, space.ops.index(op)] = 1
    mask = space.move_mask()
    beta = torch.zeros(space.layers, space.levels, len(MOVES), dtype=torch.float64)
    for layer in range(space.layers):
        for j in space.layer_levels(layer):
            legal = [m for m in range(len(MOVES)) if mask[layer, j, m]]
            beta[layer, j, legal[0]] = 1
        prev = 0 if layer == 0 else genotype.path[layer - 1]
        beta[layer, prev] = 0
        beta[layer, prev, MOVES.index(genotype.path[layer] - prev)] = 1
    return alpha, beta


# --- the expected latency -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_expected_latency_of_one_hot_weights_is_the_derived_networks(seed):
    space = preset("paper-denoise")
    table = synthetic(space, filters=20)
    genotype = random_genotype(space, seed)
    alpha, beta = one_hot(genotype)
    assert derive(space, alpha, beta) == genotype  # the weights do derive it
    expected = expected_latency(table, space, alpha, beta)
    assert expected.item() == pytest.approx(network_latency(table, genotype), rel=1e-9)


def test_expected_latency_is_differentiable_in_alphas_and_betas():
    space = small_space()
    net = Supernet(space)
    with torch.no_grad():
        net.alpha.normal_()
        net.beta.normal_()
    lat = expected_latency(synthetic(space), space, net.alpha_probs(), net.beta_probs())
    lat.backward()
    assert net.alpha.grad.abs().sum() > 0
    legal = space.move_mask()
    assert net.beta.grad[legal].abs().sum() > 0 and not net.beta.grad[~legal].any()


def test_expected_latency_lies_between_the_cheapest_and_dearest_networks():
    """Uniform weights: an average over networks, so within the range of the networks' predictions."""
    space = small_space()
    table = synthetic(space)
    net = Supernet(space)
    lat = expected_latency(table, space, net.alpha_probs(), net.beta_probs()).item()
    preds = [network_latency(table, random_genotype(space, s)) for s in range(200)]
    assert min(preds) < lat < max(preds)


def test_a_table_for_another_space_is_refused():
    table = synthetic(small_space())
    with pytest.raises(ConfigError, match="measured for space"):
        network_latency(table, random_genotype(small_space(nodes=2), 0))


# --- the table file and its validity -------------------------------------------------------------------


def test_table_round_trips_through_json_and_refuses_other_schemas():
    table = synthetic(small_space(), env={"device": "cpu"})
    data = json.loads(table.to_json())
    assert LatencyTable.from_dict(data) == table
    for field, value, message in [("schema", "hinas.genotype", "not a latency table"),
                                  ("schema_version", 99, "schema_version 99")]:
        with pytest.raises(ConfigError, match=message):
            LatencyTable.from_dict({**data, field: value})
    del data["ops"]["conv_3x3"]
    with pytest.raises(ConfigError, match="conv_3x3"):
        LatencyTable.from_dict(data)


@pytest.mark.parametrize("key, value", [("device", "cuda"), ("precision", "bfloat16"), ("torch", "1.0.0"),
                                        ("threads", 64), ("size", 17)])
def test_a_table_measured_elsewhere_is_refused(tmp_path, key, value):
    space = small_space()
    env = latency_table.environment(CPU, 32)
    path = latency_table.save(synthetic(space, env), tmp_path / "t.json")
    assert latency_table.load(path, space, space.filters, 32) == synthetic(space, env)  # holds here
    latency_table.save(synthetic(space, {**env, key: value}), path)
    with pytest.raises(ConfigError, match=f"{key} {value!r}"):
        latency_table.load(path, space, space.filters, 32)
    with pytest.raises(ConfigError, match="measure it again"):  # never silently re-used, nor overwritten
        latency_table.load_or_measure(path, space, space.filters, 32)
    with pytest.raises(ConfigError, match="filters 4 \\(here 20\\)"):
        latency_table.load(latency_table.save(synthetic(space, env), path), space, 20, 32)


def test_a_float32_table_does_not_hold_for_a_bf16_deployment(tmp_path):
    space = small_space()
    path = latency_table.save(synthetic(space, latency_table.environment(CPU, 32)), tmp_path / "t.json")
    with pytest.raises(ConfigError, match="precision 'float32' \\(here 'bf16'\\)"):
        latency_table.load(path, space, space.filters, 32, precision="bf16")


def test_a_bf16_table_is_refused_where_bf16_is_not_native(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hinas.infer.backends.bf16_native", lambda device: False)
    code = main(["profile", "--space", "paper-denoise", "--size", "16", "--filters", "2", "--precision", "bf16",
                 "--out", str(tmp_path / "t.json")])
    assert code != 0 and "bf16 needs native bf16 support" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_measuring_a_tiny_space_writes_a_table_that_is_then_reused(tmp_path, monkeypatch, one_thread):
    space = small_space(layers=2, nodes=2, filters=2)
    state = torch.random.get_rng_state()
    path = tmp_path / "table.json"
    table = latency_table.load_or_measure(path, space, 4, 16, log=print)
    assert torch.equal(torch.random.get_rng_state(), state)  # a search's random stream is untouched
    assert table.env == latency_table.environment(CPU, 16) and table.space == space.replace(filters=4)
    assert all(v >= 0 for row in table.ops.values() for v in row) and table.ops["identity"] == (0.0,) * space.levels
    assert table.calibration["networks"] == 8 and table.calibration["seeds"][0] == latency_table.CALIBRATION_SEED
    monkeypatch.setattr(latency_table, "measure", lambda *a, **k: pytest.fail("re-measured a table that holds"))
    assert latency_table.load_or_measure(path, space, 4, 16) == table
    assert network_latency(table, random_genotype(space, 0)) > 0


# --- the latency term in the search ----------------------------------------------------------------------


def _arch_steps(space, table, weight, steps=15):
    """A few Adam steps on alphas and betas of one supernet, with SearchJob's latency term at ``weight``."""
    torch.manual_seed(0)
    job = SearchJob(SearchConfig(space=space, latency_weight=weight))
    job.model, job.latency = Supernet(space), table
    with torch.no_grad():
        job.model.alpha[..., space.ops.index("dil_conv_5x5")] = 0.2  # the slow op starts ahead
    opt = torch.optim.Adam(job.model.arch_parameters(), lr=0.05)
    x = torch.rand(2, 1, 16, 16)
    for _ in range(steps):
        loss = (job.model(x) - x).pow(2).mean()
        term = job.latency_loss()
        opt.zero_grad()
        (loss if term is None else loss + term).backward()
        opt.step()
    return job.model


def test_the_latency_term_moves_the_search_off_a_slow_op(one_thread):
    space = small_space(layers=2, nodes=2, filters=2, ops=("conv_3x3", "dil_conv_5x5", "identity", "zero"))
    table = synthetic(space, slow="dil_conv_5x5")
    slow = space.ops.index("dil_conv_5x5")
    plain, aware = _arch_steps(space, table, 0.0), _arch_steps(space, table, 1.0)
    lower = plain.alpha_probs()[..., slow] - aware.alpha_probs()[..., slow]
    assert (lower > 0.02).all() and lower.mean() > 0.1

    def uses(net):
        return net.genotype().op_counts()["dil_conv_5x5"]

    assert uses(plain) >= space.nodes * space.layers and uses(aware) == 0
    assert network_latency(table, aware.genotype()) < network_latency(table, plain.genotype()) / 5


def test_a_latency_target_penalises_only_what_lies_above_it():
    space = small_space()
    job = SearchJob(SearchConfig(space=space, latency_target_ms=1e6))
    job.model, job.latency = Supernet(space), synthetic(space)
    assert job.latency_loss().item() == 0
    job.cfg = SearchConfig(space=space, latency_target_ms=1, latency_weight=2)
    expected = expected_latency(job.latency, space, job.model.alpha_probs(), job.model.beta_probs())
    assert job.latency_loss().item() == pytest.approx(2 * (expected.item() - 1))
    job.cfg = SearchConfig(space=space)
    assert job.latency_loss() is None  # off by default


def test_a_latency_aware_search_records_the_predicted_latency(tmp_path, one_thread):
    cfg = resolve(SearchConfig, "smoke")
    table = synthetic(cfg.space, latency_table.environment(CPU, 256), filters=20)
    path = latency_table.save(table, tmp_path / "table.json")
    from hinas.jobs.search import search

    result = search(resolve(SearchConfig, "smoke", overrides=[f"latency_table={path}", "latency_weight=0.1"]),
                    tmp_path / "run", progress=False)
    meta = json.loads((result.run_dir / "genotype.json").read_text())["meta"]
    assert meta["latency_ms"] == pytest.approx(network_latency(table, result.genotype), abs=0.01)
    assert meta == {**meta, **latency_meta(table, result.genotype)}
    assert all(r["expected_latency_ms"] > 0 for r in result.history)
    assert "predicted latency: " in describe(result.genotype)


def test_profile_measures_once_then_reuses(tmp_path, capsys, one_thread):
    out = tmp_path / "t.json"
    args = ["profile", "--space", "paper-denoise", "--size", "16", "--filters", "2", "--out", str(out)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "probe conv_3x3" in first and "dil_conv_5x5" in first
    assert main(args) == 0
    assert "probe" not in capsys.readouterr().out
    assert main(args[:-4] + ["--filters", "4", "--out", str(out)]) == 2
    assert "filters 2 (here 4)" in capsys.readouterr().err


# --- random architectures of a given latency, and the baselines' best form ---------------------------------


def test_random_architectures_of_a_latency_are_within_tolerance_distinct_and_reproducible():
    space = small_space()
    table = synthetic(space)
    target = network_latency(table, random_genotype(space, 3))
    drawn = [random_of_latency(table, target, i, 0.1) for i in range(4)]
    assert all(abs(network_latency(table, g) / target - 1) <= 0.1 for g in drawn)
    assert len({g.meta["seed"] for g in drawn}) == 4  # the i-th match: different draws
    assert [g.meta["seed"] for g in drawn] == [random_of_latency(table, target, i, 0.1).meta["seed"] for i in range(4)]


def test_a_latency_no_random_architecture_reaches_is_refused_with_the_count():
    table = synthetic(small_space())
    fastest = min(network_latency(table, random_genotype(table.space, s)) for s in range(500))
    with pytest.raises(ConfigError, match=r"only 0 of 500 random genotypes predict .* within 10%"):
        random_of_latency(table, fastest / 3, 0, 0.1, tries=500)


def test_plain_forms_compute_the_same_network_and_offer_bf16_only_where_native(monkeypatch):
    net = DnCNN(depth=4, channels=8).eval()
    x = torch.rand(1, 1, 24, 24)
    for native in (False, True):
        monkeypatch.setattr(latency_table, "bf16_native", lambda device, native=native: native)
        forms = latency_table.plain_forms(net)
        assert ("bf16 channels_last" in forms) == native and {"float32 NCHW", "float32 channels_last"} <= set(forms)
    with torch.inference_mode():
        reference = net(x)
        for name, run in forms.items():
            torch.testing.assert_close(run(x), reference, **({"atol": 5e-2, "rtol": 5e-2} if "bf16" in name else {}))


def test_fastest_ms_drops_the_warm_up_and_keeps_the_fastest_run(monkeypatch):
    ticks = iter([0.0, 2.0, 2.005, 3.0, 3.003])  # the warm-up (its end is never read), then runs of 5 and 3 ms
    monkeypatch.setattr(latency_table, "clock", lambda device: ("fake", lambda: next(ticks)))
    calls = []
    assert latency_table.fastest_ms(calls.append, torch.zeros(1), 2) == pytest.approx(3.0)
    assert len(calls) == 3

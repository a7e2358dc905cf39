"""The results experiments: random architectures, DnCNN through the retrain loop, the grid and its tables."""

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from hinas.engine.settings import EvalConfig, TrainConfig, resolve
from hinas.jobs.evaluate import evaluate_run
from hinas.jobs.retrain import retrain
from hinas.nas.baselines import DnCNN
from hinas.nas.genotype import Genotype, legal_paths, random_genotype
from hinas.nas.network import load_model
from hinas.nas.space import PRESETS
from hinas.studies import report, results
from hinas.studies.aggregate import bootstrap_difference


@pytest.mark.parametrize("name", ["paper-denoise", "paper-sr"])
def test_random_genotypes_are_legal_seed_deterministic_and_cover_the_space(name, tmp_path):
    space = PRESETS[name]
    draws = [random_genotype(space, seed) for seed in range(200)]
    assert random_genotype(space, 7) == draws[7] and random_genotype(space, 7).meta == {"source": "random", "seed": 7}
    assert len(set(draws)) > 190  # distinct seeds give distinct architectures
    assert {g.path for g in draws} == set(legal_paths(space))  # every legal width path is drawn
    ops = {op for g in draws for op in g.op_counts()}
    assert ops == set(space.ops) - {"zero"}
    for g in draws:
        for cell in g.cells:
            for node in cell:
                assert node[0][1] < node[1][1]  # two distinct inputs, in order, as derivation writes them
    saved = draws[3].save(tmp_path / "genotype.json")
    assert Genotype.load(saved) == draws[3]


def test_legal_paths_are_exactly_the_paths_a_genotype_accepts():
    space = PRESETS["paper-denoise"]
    paths = legal_paths(space)
    assert len(paths) == len(set(paths)) == 12  # 3 layers, widths [1, 1.5, 2], one level per layer at most
    cells = random_genotype(space, 0).cells
    for path in paths:
        Genotype(space, path, cells)  # construction validates the path


def test_dncnn_retrains_through_the_same_loop_and_evaluates(tmp_path):
    cfg = resolve(TrainConfig, "smoke", overrides=["model=dncnn"])
    metrics = retrain(cfg, tmp_path / "dncnn", progress=False)
    assert metrics["model"] == "dncnn" and metrics["params"] == 556_096 and metrics["iterations"] == cfg.iterations
    assert not (tmp_path / "dncnn" / "genotype.json").exists()
    model = load_model(tmp_path / "dncnn" / "best.pt")
    assert isinstance(model, DnCNN) and model.task == "denoise"
    cfg = resolve(EvalConfig, "smoke", overrides=[f"model={tmp_path / 'dncnn'}"])
    scores = evaluate_run(cfg, tmp_path / "eval", progress=False)
    assert scores["results"][0]["psnr"] > 0 and scores["results"][0]["sigma"] == 25


def test_every_model_of_a_level_gets_the_same_retraining_budget():
    for profile in results.PROFILES.values():
        jobs = results.grid(profile)
        outs = {j.out for j in jobs}
        assert all(n in outs for j in jobs for n in j.needs)  # every dependency is a job of the grid
        assert [j.out for j in jobs].index("search/denoise-lwas-s0") < [j.out for j in jobs].index(
            "retrain/denoise-sigma25/hinas-lwas-s0")
        for task, level in profile.order:
            trained = [j for j in jobs if j.kind == "retrain" and j.info["task"] == task and j.info["level"] == level]
            budgets = {(j.cfg.iterations, j.cfg.minutes, j.cfg.batch, j.cfg.patch, j.cfg.lr, j.cfg.data) for j in trained}
            assert len(budgets) == 1, (task, level, budgets)
            families = [j.info["family"] for j in trained]
            targets = profile.latency_targets if (task, level) == ("denoise", profile.sigmas[0]) else ()
            assert families.count("random") == profile.randoms and families.count("hinas") >= 1
            assert families.count("hinas") == len(profile.seeds) + (2 * profile.variant_seeds if task == "denoise" else 0) + len(
                targets)
            assert families.count("random-lat") == sum(n for _, n in targets)
            assert ("dncnn" in families) == (task == "denoise")


def test_sr_searched_at_one_scale_is_retrained_at_every_scale():
    profile = results.PROFILES["equal-time"]
    jobs = results.grid(profile)
    searches = [j for j in jobs if j.kind == "search" and j.out.startswith("search/sr")]
    assert [j.cfg.space.scale for j in searches] == [4] * len(profile.seeds)  # once per seed, at x4 as in the paper
    for scale in (2, 4):
        trained = {j.info["model"]: j for j in jobs if j.kind == "retrain" and (j.info["task"], j.info["level"]) == ("sr", scale)}
        assert trained["hinas-lwas-s1"].needs == ("search/sr-x4-s1",) and trained["hinas-lwas-s1"].cfg.scale == scale
        assert trained["random-2"].cfg.genotype == "genotype/sr-x4-random-2/genotype.json"
    x2, x4 = ({j.cfg for j in jobs if j.kind == "retrain" and (j.info["task"], j.info["level"]) == ("sr", s)} for s in (2, 4))
    assert {(c.data, c.patch, c.val_crop) for c in x2} == {("T91", profile.sr_patch // 2, 128)}
    assert {(c.data, c.patch, c.val_crop) for c in x4} == {("BSD500-train", 32, 0)}  # train_sr_at: x4 only
    line = results.budget(profile)
    assert "SR (searched at x4)" in line and "retrain 8 CPU-minutes x batch 8 of 64px" in line
    assert "x4 instead on BSD500-train, retrain 8 CPU-minutes x batch 8 of 128px" in line
    sr = [j for j in jobs if j.kind == "retrain" and j.info["task"] == "sr"]
    assert all(j.cfg.data == profile.sr_train_data(j.info["level"]) for j in sr)
    assert report.sr_data(profile) == "T91 (x4 retrained on BSD500-train)" and report.sr_data(results.PROFILES["cpu"]) == "T91"
    per_scale = results.grid(results.PROFILES["cpu"])  # 0: a search of its own for each scale
    assert {j.out for j in per_scale if j.kind == "search" and j.out.startswith("search/sr")} == {
        f"search/sr-x{s}-s{seed}" for s in (2, 4) for seed in results.PROFILES["cpu"].seeds}


def test_the_committed_records_ran_with_the_settings_the_profile_gives_now():
    """A recipe changed in a profile must withdraw the records it makes stale: the runner trusts a finished record."""
    records = Path(__file__).resolve().parents[1] / "results" / "equal-time" / "records"
    checked = 0
    for job in results.grid(results.PROFILES["equal-time"]):
        path = records / job.out / "config.yaml"
        if job.kind not in ("retrain", "evaluate") or not path.is_file():
            continue
        recorded = yaml.safe_load(path.read_text())
        for key, value in dataclasses.asdict(job.cfg).items():
            if key == "data_root":
                continue
            if key in ("genotype", "model"):  # recorded under the runs folder the grid ran in
                assert recorded[key].endswith(value), (job.out, key)
            else:
                assert recorded[key] == (list(value) if isinstance(value, tuple) else value), (job.out, key)
        checked += 1
    assert checked >= 40


def test_latency_targets_add_searches_that_read_one_table_and_randoms_matched_to_what_they_found():
    profile = results.PROFILES["latency"]
    jobs = {j.out: j for j in results.grid(profile)}
    [table] = [j for j in jobs.values() if j.kind == "table"]
    for target, randoms in profile.latency_targets:
        found = jobs[f"search/denoise-lat{target:g}"]
        assert found.needs == (table.out,) and found.cfg.latency_target_ms == target
        assert found.cfg.latency_table == results.LATENCY_TABLE and found.cfg.latency_filters == table.cfg[1] == 8
        unconstrained = jobs["search/denoise-lwas-s0"].cfg
        assert found.cfg == unconstrained.__class__(**{**unconstrained.__dict__, "latency_target_ms": target,
                                                       "latency_table": results.LATENCY_TABLE, "latency_filters": 8,
                                                       "latency_precision": profile.latency_precision})
        matched = [j for j in jobs.values() if j.out.startswith(f"genotype/denoise-lat{target:g}-random-")]
        assert len(matched) == randoms and all(j.needs == (found.out,) and j.cfg[2] == found.out for j in matched)
    order = list(jobs.values())
    assert order[0] is table and table.exclusive  # measured first, alone
    measure = order[-1]
    assert measure.kind == "measure" and measure.exclusive  # every model timed together, alone, at the end
    assert set(measure.needs) == {j.out for j in order if j.kind == "evaluate"}


@pytest.mark.parametrize("text, parsed", [("170:5,195", ((170.0, 5), (195.0, 0))), ("80.5:2", ((80.5, 2),))])
def test_latency_targets_parse_from_the_command_line(text, parsed):
    assert results.build_parser().parse_args(["--targets", text]).targets == parsed


@pytest.mark.parametrize("text", ["", "fast", "170:x", "-5:2", "170:5:1", "170:-1"])
def test_bad_latency_targets_are_refused_with_the_expected_form(text, capsys):
    with pytest.raises(SystemExit):
        results.build_parser().parse_args([f"--targets={text}"])
    assert "expected MS[:RANDOMS]" in capsys.readouterr().err


def _timed(model, family, ms, psnr, target=None, predicted=None):
    return {**_row(model, family, family, psnr), "latency_ms": ms, "target_ms": target, "predicted_ms": predicted}


def test_the_latency_verdict_compares_a_search_with_the_randoms_of_its_own_target_under_half_dncnn():
    rows = [_timed("dncnn-17", "dncnn", 400, 30.0), _timed("hinas-lwas-s0", "hinas", 230, 29.0, predicted=220),
            _timed("hinas-lat170", "hinas", 180, 28.6, 170, 176), _timed("hinas-lat195", "hinas", 210, 28.9, 195, 200),
            _timed("lat170-random-0", "random-lat", 175, 28.5, 170, 178),
            _timed("lat170-random-1", "random-lat", 190, 28.7, 170, 181),
            _timed("lat195-random-0", "random-lat", 205, 28.0, 195, 199)]
    verdicts = {v["model"]: v for v in results.latency_verdict(rows, "Set12")}
    assert set(verdicts) == {"hinas-lat170", "hinas-lat195"}  # the unconstrained search has no target
    v = verdicts["hinas-lat170"]
    assert v["half_dncnn"] and v["n_random"] == 2 and v["random_best"] == 28.7 and not v["beats_best_random"]
    assert v["random_ms"] == "175-190" and v["random_mean"] == pytest.approx(28.6)
    assert not verdicts["hinas-lat195"]["half_dncnn"] and verdicts["hinas-lat195"]["beats_best_random"]
    assert [r["model"] for r in results.pareto_front(rows, "Set12")] == [
        "lat170-random-0", "hinas-lat170", "lat170-random-1", "hinas-lat195", "hinas-lwas-s0", "dncnn-17"]
    timed = results.latency_rows(rows)
    assert [r["latency_ms"] for r in timed] == sorted(r["latency_ms"] for r in rows)
    assert timed[0]["error_pct"] == pytest.approx(100 * (178 / 175 - 1)) and timed[-1]["error_pct"] is None


def test_every_grid_job_gets_a_fresh_process():
    with results.fresh_process_pool(1) as pool:
        pids = [pool.submit(os.getpid).result() for _ in range(3)]
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_deadline_in_the_past_starts_nothing(tmp_path):
    left = results.run_grid(tmp_path, results.PROFILES["smoke"], deadline=time.time() - 1, log=lambda _: None)
    assert len(left) == len(results.grid(results.PROFILES["smoke"])) and not any(tmp_path.iterdir())


def _finish(runs, job):
    """Leave ``job``'s run directory as a finished run would: what ``results.done`` reads, weights, a log."""
    d = runs / job.out
    d.mkdir(parents=True, exist_ok=True)
    if job.kind == "table":
        (runs / results.LATENCY_TABLE).write_text("{}")
    elif job.kind == "measure":
        (d / "latency.json").write_text(json.dumps({out: {"ms": 1.0} for out in job.needs}))
    else:
        for name in ("genotype.json", "metrics.json", "complexity.json"):
            (d / name).write_text(json.dumps({"job": job.out}))
        (d / "best.pt").write_bytes(b"weights")
        (d / "checkpoint.pt").write_bytes(b"weights")
    (d / "log.jsonl").write_text('{"time": 1.0}\n')
    (d / "config.yaml").write_text("seed: 0\n")


def test_records_let_a_fresh_checkout_resume_the_grid_without_weights(tmp_path):
    profile = results.PROFILES["smoke"]
    jobs = results.grid(profile)
    runs, records, fresh = tmp_path / "runs", tmp_path / "records", tmp_path / "fresh"
    for job in jobs:
        _finish(runs, job)
    assert results.sync_records(runs, records, profile) == []  # everything was there: recorded, nothing restored
    assert all(results.done(records, j) for j in jobs) and not list(records.rglob("*.pt"))
    assert all((records / jobs[-1].out / name).is_file() for name in ("log.jsonl", "config.yaml"))

    assert results.sync_records(fresh, records, profile) == jobs  # a fresh checkout: the whole grid is finished
    assert all(results.done(fresh, j) for j in jobs)
    assert results.run_grid(fresh, profile, records=records, log=lambda _: None) == []


def test_a_retrain_whose_evaluation_is_not_recorded_runs_again_but_its_search_is_restored(tmp_path):
    profile = results.PROFILES["smoke"]
    jobs = results.grid(profile)
    evaluation = next(j for j in jobs if j.kind == "evaluate" and j.needs[0].endswith("hinas-lwas-s0"))
    runs, records, fresh = tmp_path / "runs", tmp_path / "records", tmp_path / "fresh"
    for job in jobs:
        if job.kind != "measure" and job is not evaluation:
            _finish(runs, job)
    results.sync_records(runs, records, profile)
    restored = {j.out for j in results.sync_records(fresh, records, profile)}
    retrain, search = evaluation.needs[0], "search/denoise-lwas-s0"
    assert search in restored and retrain not in restored and evaluation.out not in restored
    # the measure job times every model's weights: nothing it needs is restored without them
    assert not any(j.kind in ("retrain", "evaluate") and j.out in restored and j.info.get("level") == 25 for j in jobs)
    assert all(j.kind in results.WEIGHTLESS for j in jobs if j.out in restored and j.info.get("task") == "denoise")
    assert all(j.out in restored for j in jobs if j.info.get("task") == "sr")  # SR models are not timed: restored


def test_a_level_begun_on_another_machine_waits_for_it_with_what_needs_it(tmp_path):
    profile = results.PROFILES["smoke"]
    jobs = results.grid(profile)
    runs, records = tmp_path / "runs", tmp_path / "records"
    begun = next(j for j in jobs if j.kind == "retrain" and j.info["task"] == "denoise")
    _finish(records, begun)
    (records / begun.out / "metrics.json").write_text(json.dumps({"machine": "Other CPU (AVX2)"}))
    assert results.levels_elsewhere(jobs, [runs, records], here="Other CPU (AVX2)") == {}
    assert results.levels_elsewhere(jobs, [runs, records], here="This CPU (AVX512)") == {("denoise", 25): "Other CPU (AVX2)"}

    lines = []
    left = results.run_grid(runs, profile, records=records, deadline=time.time() - 1, log=lines.append)
    held = [line for line in lines if line.startswith("held")]
    level = {j.out for j in jobs if j.info.get("task") == "denoise" and j.kind in ("retrain", "evaluate")}
    assert len(held) == 1 and f"denoise sigma 25 ({len(level) // 2} retrains): begun on Other CPU (AVX2)" in held[0]
    assert {j.out for j in left} == {j.out for j in jobs}  # the deadline started nothing
    assert {j.out for j in left[-len(level) - 1:]} == level | {results.LATENCY_MEASURED}  # held last, with what needs them
    mixed = results.run_grid(runs, profile, records=records, deadline=time.time() - 1, mix_machines=True, log=lines.append)
    assert len(mixed) == len(left) and len([line for line in lines if line.startswith("held")]) == 1


def _row(model, family, variant, psnr, task="denoise", level=25):
    return {"task": task, "level": level, "model": model, "family": family, "variant": variant, "seed": 0, "params": 1000,
            "Set12/psnr": psnr, "Set12/ssim": 0.8}


def test_the_report_names_each_levels_machine_and_warns_where_a_level_was_retrained_on_two():
    rows = [_row("hinas-lwas-s0", "hinas", "lwas", 30.0), _row("random-0", "random", "random", 29.0),
            _row("random-0", "random", "random", 33.0, task="sr", level=2), _row("bicubic", "bicubic", "bicubic", 31.0, "sr", 2)]
    for r, name in zip(rows, ("EPYC (AVX512, bf16 units)", "EPYC (AVX2)", "EPYC (AVX2)", None)):
        r["machine"] = name
    searches = [{"machine": "EPYC (AVX2)"}, {}]
    assert report.machines(rows, searches) == ("EPYC (AVX2) (1 searches, 2 retrains); machine not recorded (1 searches); "
                                                "EPYC (AVX512, bf16 units) (1 retrains)")
    warning, one = report.level_machines(rows)
    assert warning.startswith("  - **Mixed machines at denoising sigma 25**: retrained on EPYC (AVX2) and EPYC (AVX512")
    assert one == "  - SR x2: retrained on EPYC (AVX2)"


def test_summary_and_search_versus_random():
    rows = [_row("hinas-lwas-s0", "hinas", "lwas", 30.0), _row("hinas-lwas-s1", "hinas", "lwas", 31.0),
            _row("random-0", "random", "random", 29.0), _row("random-1", "random", "random", 30.8)]
    for r, steps in zip(rows, (800, 901, 1000, 1100)):
        r["iterations"] = steps
    summary = {s["group"]: s for s in results.summarise(rows)}
    assert summary["lwas"]["mean"] == pytest.approx(30.5) and summary["lwas"]["std"] == pytest.approx(0.7071, abs=1e-4)
    assert summary["random"]["n"] == 2 and summary["random"]["max"] == 30.8
    [verdict] = results.search_beats_random(rows)
    assert verdict["group"] == "lwas" and verdict["gain_db"] == pytest.approx(0.6) and verdict["beats_best_random"] is False
    assert verdict["ci_low"] < 0.6 < verdict["ci_high"] and verdict["ci_low"] > -0.81 and verdict["ci_high"] < 2.01
    assert (verdict["iterations"], verdict["random_iterations"]) == (850, 1050)
    table = results.markdown_table(rows, 512)
    assert "**Denoising**" in table and "| sigma 25 | random-1 | 1.0 |" in table and "30.80 / 0.8000" in table
    assert "| - | - | - | 1100 | 30.80" in table


def test_the_report_says_yes_only_where_the_whole_interval_is_above_zero():
    from hinas.studies.report import answer

    assert answer({"gain_db": 0.4, "ci_low": 0.1, "ci_high": 0.7}).startswith("yes, +0.40 dB (95% CI +0.10 to +0.70)")
    assert answer({"gain_db": 0.4, "ci_low": -0.1, "ci_high": 0.9}).startswith("no clear difference")
    assert answer({"gain_db": -0.5, "ci_low": -0.8, "ci_high": -0.2}).startswith("no, worse")


def test_the_report_heads_each_task_and_level_with_the_papers_sharing_against_random_and_the_search_cost():
    from hinas.studies.report import headlines

    def beat(task, level, group, low, high):
        return {"task": task, "level": level, "set": "B100" if task == "sr" else "BSD68", "group": group, "n": 5,
                "n_random": 5, "gain_db": (low + high) / 2, "ci_low": low, "ci_high": high}

    beats = [{**beat("denoise", 25, "lwas", -0.3, 0.1), "iterations": 900, "random_iterations": 1000},
             beat("denoise", 25, "tied", 0.1, 0.3),
             beat("sr", 4, "lwas", 0.2, 0.6), beat("sr", 2, "tied", 0.1, 0.2)]
    searches = [{"search": "denoise-lwas-s0", "sharing": "lwas", "cpu_seconds": 1200.0},
                {"search": "denoise-lwas-s1", "sharing": "lwas", "cpu_seconds": 1320.0},
                {"search": "denoise-tied-s0", "sharing": "tied", "cpu_seconds": 6000.0},
                {"search": "sr-x4-s0", "sharing": "lwas", "cpu_seconds": 1080.0}]
    denoise, sr = headlines(beats, searches)
    assert denoise.startswith("- **denoise sigma 25**, lwas (5 seeds) against 5 random architectures: BSD68: no clear")
    assert "21 CPU-minutes on top (one search serves every sigma)" in denoise and "+0.20" not in denoise
    assert "900 retraining iterations on average, random 1000" in denoise and "iterations" not in sr
    assert sr.startswith("- **sr x4**") and "yes, +0.40 dB (95% CI +0.20 to +0.60)" in sr and "18 CPU-minutes" in sr


def test_a_search_has_learnt_when_its_supernet_is_5_db_over_noise_or_above_bicubic():
    from hinas.studies.report import margins

    rows = [{"search": "denoise-lwas-s2", "val_psnr": 24.6, "input_psnr": 20.5},
            {"search": "denoise-lwas-s0", "val_psnr": 26.4, "input_psnr": 20.4},
            {"search": "sr-x2-s0", "val_psnr": 30.1, "input_psnr": 29.9},
            {"search": "sr-x4-s0", "val_psnr": 25.0, "input_psnr": 25.2}]
    assert [(r["learnt"], round(r["margin_db"], 1)) for r in margins(rows)] == [("NO", 4.1), ("yes", 6.0), ("yes", 0.2),
                                                                                 ("NO", -0.2)]


def test_bootstrap_interval_covers_a_clear_difference_and_straddles_zero_for_noise():
    clear = bootstrap_difference([31.0, 31.2, 30.9, 31.1, 31.0], [30.0, 30.1, 29.9, 30.2, 30.0])
    assert clear["diff"] == pytest.approx(1.0) and 0.7 < clear["low"] < 1.0 < clear["high"] < 1.3
    noise = bootstrap_difference([30.0, 31.0, 29.5, 30.8, 30.2], [30.4, 29.8, 30.9, 30.1, 30.3])
    assert noise["low"] < 0 < noise["high"]
    assert bootstrap_difference([1.0, 2.0], [0.0, 1.0]) == bootstrap_difference([1.0, 2.0], [0.0, 1.0])  # seeded
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_difference([], [1.0])


def test_published_figures_sit_beside_ours_only_for_the_same_model_set_and_level():
    rows = [{**_row("bicubic", "bicubic", "bicubic", 0, "sr", 2), "Set5/psnr": 33.65}]
    table = results.published_table(rows)
    set5 = next(r for r in table if r["source"].startswith("bicubic") and r["set"] == "Set5" and r["level"] == 2)
    assert set5["our_psnr"] == 33.65 and set5["psnr"] == 33.66 and set5["comparable"] == "yes"
    assert all(r["our_psnr"] is None for r in table if r is not set5)
    assert {r["comparable"] for r in table if not r["source"].startswith("bicubic")} == {"no"}
    json.dumps(table)  # the report writes it as JSON


def test_an_exclusive_job_waits_for_an_empty_machine_and_runs_alone():
    a, b, c = (results.Job("search", name) for name in "abc")
    alone = results.Job("measure", "timing", exclusive=True)
    assert results.startable([a, b, c], [], 2) == [a, b]
    assert results.startable([alone, a], [b], 2) == []  # waits; a does not overtake it
    assert results.startable([a, alone, b], [], 2) == [a]  # stops at it
    assert results.startable([alone, a], [], 2) == [alone]  # empty machine: it starts, alone
    assert results.startable([a, b], [alone], 2) == []


def test_a_failed_run_drops_exactly_what_needs_it():
    jobs = results.grid(results.PROFILES["smoke"])
    search = next(j for j in jobs if j.out == "search/denoise-lwas-s0")
    left = results._without_dependents([j for j in jobs if j is not search], search)
    dropped = {j.out for j in jobs} - {j.out for j in left}
    assert dropped == {"search/denoise-lwas-s0", "retrain/denoise-sigma25/hinas-lwas-s0",
                       "evaluate/denoise-sigma25/hinas-lwas-s0", results.LATENCY_MEASURED}


def test_a_dncnn_checkpoint_with_a_bad_shape_is_refused(tmp_path):
    import torch

    from hinas.errors import GenotypeError

    bad = tmp_path / "bad.pt"
    torch.save({"format": "hinas.dncnn", "in_channels": 1, "depth": "17; import os", "channels": 64, "state_dict": {}}, bad)
    with pytest.raises(GenotypeError, match="DnCNN checkpoint"):
        load_model(bad)


def test_the_report_lists_networks_that_made_a_test_image_worse_than_its_input(tmp_path):
    from hinas.studies.report import worse_than_input

    profile = results.PROFILES["smoke"]
    evaluations = [j for j in results.grid(profile) if j.kind == "evaluate"]
    header = "set,sigma,scale,name,psnr,ssim,input_psnr,input_ssim\n"
    cases = {evaluations[0]: "Set12,25.0,,01,28.0,0.8,20.1,0.3\nSet12,25.0,,02,17.5,0.5,20.2,0.3\n"
                             "BSD68,25.0,,test028,19.0,0.5,20.4,0.3\n",
             evaluations[1]: "Set12,25.0,,01,28.0,0.8,20.1,0.3\n", evaluations[2]: None}
    for job, per_image in cases.items():
        d = tmp_path / job.out
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
        (d / "complexity.json").write_text("{}")
        if per_image is not None:
            (d / "per_image.csv").write_text(header + per_image)
    rows, missing = worse_than_input(tmp_path, profile)
    assert missing == 1  # the evaluation without per-image scores
    [row] = rows  # the second network made no image worse
    assert row["model"] == Path(evaluations[0].out).name and (row["worse"], row["images"]) == (2, 3)
    assert row["worst"] == "Set12/02" and (row["psnr"], row["input_psnr"]) == (17.5, 20.2)

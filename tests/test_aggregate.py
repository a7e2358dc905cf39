"""Aggregating repeated runs (seeds): mean and spread per metric, and whether the genotypes agree."""

import json
import statistics

import pytest
from conftest import small_space, uniform_genotype

from hinas.cli import main
from hinas.errors import ConfigError
from hinas.nas.genotype import Genotype
from hinas.studies.aggregate import aggregate


def search_run(folder, val_psnr: float, op: str, epoch: int) -> None:
    """A search run directory as far as aggregation reads it: metrics.json with the selected genotype."""
    folder.mkdir()
    uniform = uniform_genotype(small_space(), op, (0, 1, 2))
    genotype = Genotype(uniform.space, uniform.path, uniform.cells, {"epoch": epoch})
    metrics = {"best_epoch": epoch, "val_psnr": val_psnr, "skip_ops": 0, "device": "cpu", "genotype": genotype.to_dict(),
               "convention": {"shave": 0}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_mean_and_sample_spread_per_metric_and_genotype_groups(tmp_path):
    for seed, (psnr, op) in enumerate([(24.0, "conv_3x3"), (25.0, "conv_3x3"), (27.0, "sep_conv_3x3")]):
        search_run(tmp_path / f"seed{seed}", psnr, op, epoch=seed + 1)
    runs = [tmp_path / f"seed{s}" for s in range(3)]
    summary = aggregate(runs)
    psnr = summary["metrics"]["val_psnr"]
    assert psnr["mean"] == pytest.approx(76 / 3) and psnr["std"] == pytest.approx(statistics.stdev([24, 25, 27]))
    assert (psnr["min"], psnr["max"], psnr["runs"]) == (24.0, 27.0, 3)
    assert set(summary["metrics"]) == {"best_epoch", "val_psnr", "skip_ops"}  # numbers only: no device, genotype, convention
    assert summary["genotypes"] == [[str(runs[0]), str(runs[1])], [str(runs[2])]] and summary["genotypes_agree"] is False
    assert aggregate(runs[:2])["genotypes_agree"] is True  # the epoch a genotype was picked at does not matter


def test_evaluation_runs_and_flat_metric_files_aggregate_too(tmp_path):
    for i, psnr in enumerate([30.0, 31.0]):
        result = {"set": "Set12", "task": "denoise", "sigma": 25, "scale": None, "psnr": psnr, "ssim": 0.8, "input_psnr": 20.2}
        (tmp_path / f"eval{i}.json").write_text(json.dumps({"model": "m", "results": [result]}))
    (tmp_path / "one.json").write_text(json.dumps({"denoise/sigma25/Set12/psnr": 29.0}))
    summary = aggregate([tmp_path / "eval0.json", tmp_path / "eval1.json", tmp_path / "one.json"])
    psnr = summary["metrics"]["denoise/sigma25/Set12/psnr"]
    assert (psnr["mean"], psnr["std"], psnr["runs"]) == (30.0, 1.0, 3)
    assert summary["metrics"]["denoise/sigma25/Set12/ssim"]["runs"] == 2 and summary["genotypes_agree"] is None
    single = aggregate([tmp_path / "one.json"])["metrics"]["denoise/sigma25/Set12/psnr"]
    assert single["std"] is None


def test_cli_writes_the_table_and_json(tmp_path, capsys):
    for seed in range(2):
        search_run(tmp_path / f"seed{seed}", 24.0 + seed, "conv_3x3", epoch=3)
    out = tmp_path / "agg"
    assert main(["aggregate", str(tmp_path / "seed0"), str(tmp_path / "seed1"),
                 "--json", str(out / "seeds.json"), "--markdown", str(out / "seeds.md")]) == 0
    table = (out / "seeds.md").read_text()
    assert "| val_psnr | 24.5 | 0.707107 | 24 | 25 | 2 |" in table and "all 2 runs found the same one" in table
    assert table in capsys.readouterr().out
    assert json.loads((out / "seeds.json").read_text())["metrics"]["val_psnr"]["mean"] == 24.5


def test_unreadable_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.json: cannot read run metrics"):
        aggregate([tmp_path / "missing.json"])
    assert main(["aggregate", str(tmp_path / "missing")]) == 2

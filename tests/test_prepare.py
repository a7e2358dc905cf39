"""The prepare stage offline: sets taken from a local data root, what is missing named with where to get it,
and the step that keeps a run's metrics where DVC experiments keep them."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hinas import cli
from hinas.data.fetch import SOURCES, DownloadError
from hinas.data.images import NAMED_SETS, named_set
from hinas.errors import ConfigError, DataError
from hinas.studies import pipeline
from hinas.studies.pipeline import DataConfig, keep, prepare, set_digest


def fake_set(root, name):
    """The named set with its full image count of tiny PNGs, laid out as in HINAS_DATA_ROOT."""
    for folder in NAMED_SETS[name].folders:
        count = next(s.count for s in NAMED_SETS.values() if s.folders == (folder,))
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / folder / f"{i:03d}.png")


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "local"
    for name in ("Set5", "Set12", "BSD500-trainval"):
        fake_set(root, name)
    return root


def test_local_sets_are_linked_with_digests_and_the_missing_ones_named(tmp_path, local, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(root="data/raw", data_root=str(local), download=False, denoise=("Set12", "BSD500-trainval"),
                     sr=("Set5", "DIV2K-valid", "T91"))
    said = []
    manifest = prepare(cfg, "denoise", "runs/denoise.json", echo=said.append)
    assert manifest == json.loads((tmp_path / "runs/denoise.json").read_text())["sets"]
    for name in ("Set12", "BSD500-trainval"):
        assert manifest[name] == {"images": NAMED_SETS[name].count, "sha256": set_digest(named_set(name, local))}
        for folder in NAMED_SETS[name].folders:
            assert os.readlink(tmp_path / "data/raw" / folder) == str(local / folder)
    assert said[0].startswith("Set12: 12 images, sha256 ") and f"symlinked from {local}" in said[0]

    (tmp_path / "runs/sr.json").write_text("last good manifest")
    with pytest.raises(DataError) as err:
        prepare(cfg, "sr", "runs/sr.json", echo=said.append)
    message = str(err.value)
    assert "2 data set(s) of the sr half" in message and "Set5" not in message
    assert SOURCES["DIV2K-valid"].url in message and "data/raw/DIV2K/DIV2K_valid_HR/" in message
    assert f"no {local}/DIV2K/DIV2K_valid_HR/" in message
    assert "T91: " in message and "hinas knows no download for it" in message
    assert (tmp_path / "data/raw/Set5/HR").is_symlink()  # what is there is gathered all the same
    assert (tmp_path / "runs/sr.json").read_text() == "last good manifest"

    said.clear()
    assert prepare(cfg, "denoise", "runs/denoise.json", echo=said.append) == manifest
    assert all("already in data/raw" in line for line in said)


def test_copies_and_the_environment_variable_and_folders_never_replaced(tmp_path, local, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HINAS_DATA_ROOT", str(local))
    monkeypatch.setattr(pipeline, "download", lambda *a, **k: pytest.fail("downloaded over a folder of real files"))
    cfg = DataConfig(link="copy", denoise=("Set12",), sr=("Set5",))
    (tmp_path / "data/raw/Set5/HR").mkdir(parents=True)
    (tmp_path / "data/raw/Set5/HR/mine.png").write_bytes((local / "Set5/HR/000.png").read_bytes())
    with pytest.raises(DataError, match=r"hold 1 images, not 5; remove what is there to take the set from"):
        prepare(cfg, None, "m.json")
    assert [p.name for p in (tmp_path / "data/raw/Set5/HR").iterdir()] == ["mine.png"]
    copied = tmp_path / "data/raw/Set12"
    assert copied.is_dir() and not copied.is_symlink() and len(list(copied.iterdir())) == 12

    monkeypatch.delenv("HINAS_DATA_ROOT")
    with pytest.raises(DataError, match="no local copy \\(HINAS_DATA_ROOT and data.data_root are unset\\)"):
        prepare(DataConfig(download=False, sr=("Set14",)), "sr", "m.json")


def test_a_source_is_downloaded_once_for_the_sets_it_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HINAS_DATA_ROOT", raising=False)
    calls = []

    def offline(names, root, progress):
        calls.append(names)
        raise DownloadError(SOURCES[names[0]], root, "no route to host")

    monkeypatch.setattr(pipeline, "download", offline)
    cfg = DataConfig(denoise=("BSD500-trainval", "BSD500-test", "B100"))
    with pytest.raises(DataError, match="(?s)3 data set.*downloading failed: no route to host. To get it") as err:
        prepare(cfg, "denoise", "m.json")
    assert calls == [["BSDS500"]] and "may be offline" not in str(err.value)

    def fetched(names, root, progress):
        for name in SOURCES[names[0]].sets:
            fake_set(root, name)

    monkeypatch.setattr(pipeline, "download", fetched)
    said = []
    assert set(prepare(cfg, "denoise", "m.json", echo=said.append)) == set(cfg.denoise)
    assert f"downloaded from {SOURCES['BSDS500'].url}" in said[0]


def test_data_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="data.denoise: unknown set.*bsds500; choose from embedded, .*BSD500-trainval"):
        DataConfig(denoise=("bsds500",))
    with pytest.raises(ConfigError, match="data.root is empty"):
        DataConfig(root="", sr=("Set5",))
    assert DataConfig(root="", sr=("embedded-val",)).sets() == ("embedded-val",)
    assert DataConfig(denoise=("Set12", "BSD68"), sr=("Set5", "Set12")).sets() == ("Set12", "BSD68", "Set5")
    with pytest.raises(ConfigError, match="unknown task 'gray'"):
        DataConfig().sets("gray")


def test_cli_prepare_writes_the_manifest_or_says_what_is_missing(tmp_path, local, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"data:\n  data_root: {local}\n  download: false\n"
                                          "  denoise: [Set12, embedded-val]\n  sr: [Set14]\n")
    assert cli.main(["prepare", "--config", "params.yaml:data", "--task", "denoise", "--out", "d.json"]) == 0
    out = capsys.readouterr().out
    assert "embedded-val: 4 images" in out and "manifest: d.json (2 sets)" in out
    assert cli.main(["prepare", "--config", "params.yaml:data", "--out", "all.json"]) == 2
    err = capsys.readouterr().err
    assert "Set14: " in err and f"{SOURCES['SR-benchmark'].url}" in err and not (tmp_path / "all.json").exists()


def test_keep_writes_flat_numbers_plot_rows_and_the_genotype(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "val_psnr": 28.5, "best_epoch": 3, "stopped_early": None, "device": "cpu", "flag": True,
        "genotype": {"cells": []}, "convention": {"shave": 4},
        "results": [{"task": "denoise", "sigma": 30.0, "scale": None, "set": "Set12", "psnr": 29.0, "ssim": 0.8,
                     "input_psnr": 18.6}]}))
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "val_psnr": 20.0, "arch_loss": None, "alpha": [[0.1]]}]))
    (run / "genotype.json").write_text('{"schema_version": 1}')
    assert pipeline.main(["keep", str(run), str(tmp_path / "kept")]) == 0
    kept = tmp_path / "kept"
    assert json.loads((kept / "metrics.json").read_text()) == {
        "val_psnr": 28.5, "best_epoch": 3, "denoise/sigma30/Set12/psnr": 29.0, "denoise/sigma30/Set12/ssim": 0.8,
        "denoise/sigma30/Set12/input_psnr": 18.6}
    assert json.loads((kept / "history.json").read_text()) == [{"epoch": 1, "val_psnr": 20.0}]
    assert (kept / "genotype.json").read_text() == '{"schema_version": 1}'
    assert pipeline.main(["keep", str(tmp_path / "missing"), str(kept)]) == 2
    assert keep(run, tmp_path / "again") == [tmp_path / "again" / n for n in ("metrics.json", "history.json", "genotype.json")]

"""Bad input never corrupts results: a clear error naming the problem, and nothing partial left behind.

``docs/bad_inputs.md`` lists every bad input tried here and in the other test files, with what happens;
``test_the_table_names_only_tests_that_exist`` keeps the table and the tests in step. The property-based
tests at the end throw random settings, genotype JSON and checkpoint bytes at the loaders.
"""

import copy
import errno
import functools
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_space, uniform_genotype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import hinas.files
from hinas import config
from hinas.cli import main
from hinas.engine.checkpoint import FORMAT, read_checkpoint
from hinas.engine.rundir import CHECKPOINT
from hinas.engine.settings import EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.errors import CheckpointError, ConfigError, DataError, GenotypeError
from hinas.eval.scoring import evaluate_model
from hinas.nas.genotype import MAX_BYTES, Genotype
from hinas.nas.network import Network, load_model, save_model
from hinas.nas.space import SearchSpace, preset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["search", "--preset", "smoke"]

SETTINGS = [
    ("unknown-key", SMOKE + ["--set", "epochz=3"],
     "search: unknown key(s) 'epochz' (did you mean 'epochs'?); valid keys: amp, arch_lr"),
    ("unknown-space-key", SMOKE + ["--set", "space.layer=3"], "space: unknown key(s) 'layer'"),
    ("wrong-type", SMOKE + ["--set", "epochs=three"], "search.epochs: expected an integer, got 'three'"),
    ("float-for-int", SMOKE + ["--set", "batch=2.5"], "search.batch: expected an integer, got 2.5"),
    ("number-for-list", SMOKE + ["--set", "sigmas=30"], "search.sigmas: expected list of float, got 30"),
    ("not-finite", SMOKE + ["--set", "lr=.nan"], "search.lr: expected a finite number, got nan"),
    ("infinite", SMOKE + ["--set", "space.widths=[1, .inf]"], "space.widths[1]: expected a finite number, got inf"),
    ("bad-choice", SMOKE + ["--set", "amp=fp8"], "search.amp: 'fp8' is not valid; choose one of 'auto' | 'off'"),
    ("negative-sigma-search", SMOKE + ["--set", "sigmas=[30, -5]"], "search.sigmas: noise levels must be non-negative"),
    ("negative-sigma-retrain", ["retrain", "--genotype", "g.json", "--set", "sigma=-1"],
     "train.sigma: must not be negative, got -1.0"),
    ("negative-sigma-evaluate", ["evaluate", "--set", "sigmas=[-25]"],
     "eval.sigmas: noise levels must not be negative, got [-25.0]"),
    ("scale-5-space", SMOKE + ["--set", "space.task=sr", "--set", "space.in_channels=3", "--set", "space.scale=5"],
     "space.scale: 5 is not valid for sr; choose one of (2, 3, 4, 8)"),
    ("scale-5-retrain", ["retrain", "--genotype", "g.json", "--set", "scale=5"], "train.scale: 5 is not valid"),
    ("scale-5-evaluate", ["evaluate", "--model", "bicubic", "--set", "scales=[2, 5]"], "eval.scales: [2, 5] is not valid"),
    ("scale-for-denoising", ["retrain", "--preset", "smoke", "--genotype", "{genotype}", "--set", "scale=2"],
     "train.scale: 2 applies to SR genotypes only"),
    ("denoise-scale", SMOKE + ["--set", "space.scale=2"], "space.scale: denoising keeps the image size, so scale must be 1"),
    ("zero-layers", SMOKE + ["--set", "space.layers=0"], "space.layers: must be at least 1, got 0"),
    ("zero-epochs", SMOKE + ["--set", "epochs=0"], "search.epochs: must be at least 1, got 0"),
    ("widths-not-increasing", SMOKE + ["--set", "space.widths=[1, 2, 1.5]"],
     "space.widths: width factors must increase strictly"),
    ("widths-not-from-1", SMOKE + ["--set", "space.widths=[1.5, 2]"], "space.widths: the first width factor must be 1"),
    ("too-wide", SMOKE + ["--set", "space.filters=5000"], "space.filters: 5000 x width 2 exceeds 4096 channels per node"),
    ("unknown-op", SMOKE + ["--set", "space.ops=[conv_3x3, conv_9x9]"], "unknown operation 'conv_9x9'"),
    ("only-zero-op", SMOKE + ["--set", "space.ops=[zero]"], "at least one operation other than 'zero'"),
    ("channels-2", SMOKE + ["--set", "space.in_channels=2"], "space.in_channels: 2 is not valid; choose 1 (gray) or 3 (RGB)"),
    ("batch-larger-than-data", SMOKE + ["--set", "batch=50"], "search.batch: 50 is larger than the 5 patches an epoch draws"),
    ("val-images-too-many", SMOKE + ["--set", "val_images=11"], "val_images=11 must leave at least 2 of the 12 images"),
    ("rollback-factor", SMOKE + ["--set", "rollback_lr_factor=1.5"],
     "search.rollback_lr_factor: must lie strictly between 0 and 1"),
    ("nonfinite-policy", SMOKE + ["--set", "on_nonfinite=ignore"], "search.on_nonfinite: 'ignore' is not valid"),
    ("negative-checkpoint-every", SMOKE + ["--set", "checkpoint_every=-1"], "search.checkpoint_every: must not be negative"),
    ("tile-overlap", ["evaluate", "--set", "tile=16", "--set", "tile_overlap=16"],
     "eval.tile_overlap (16) must be smaller than tile (16)"),
    ("bad-device", SMOKE + ["--set", "device=tpu"], "device: 'tpu' is not valid; use auto, cpu, cuda or cuda:N"),
    ("unknown-data", SMOKE + ["--set", "data=NoSuchSet"], "unknown data 'NoSuchSet': expected embedded"),
    ("empty-folder", SMOKE + ["--set", "data={empty}"], "no images under"),
    ("malformed-set", SMOKE + ["--set", "lr"], "--set expects key=value, got 'lr'"),
    ("malformed-yaml", SMOKE + ["--set", "sigmas=[30,"], "--set sigmas=[30,: the value is not valid YAML"),
    ("not-a-section", SMOKE + ["--set", "lr.x=1"], "--set lr.x=1: 'lr' is not a section"),
    ("missing-config", ["search", "--config", "nowhere.yaml"], "nowhere.yaml: cannot read config file"),
    ("config-not-mapping", ["search", "--config", "{list_yaml}"], "expected a mapping of settings"),
    ("config-unknown-preset", ["search", "--config", "{tiny_yaml}"], "unknown preset 'tiny'; choose one of paper-denoise"),
    ("config-missing-section", ["search", "--config", "{tiny_yaml}:nosuch"], "no section 'nosuch'"),
    ("missing-genotype", ["retrain", "--preset", "smoke", "--genotype", "missing.json"],
     "missing.json: cannot read genotype file"),
    ("baseline-wrong-task", ["evaluate", "--model", "bicubic", "--set", "task=denoise"],
     "baseline 'bicubic' does not apply to task 'denoise'"),
]


@pytest.fixture
def files(tmp_path):
    """Stand-ins for the placeholders in SETTINGS."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    (tmp_path / "tiny.yaml").write_text("preset: tiny\nepochs: 2\n")
    genotype = uniform_genotype(resolve(SearchConfig, "smoke").space, "conv_3x3", (0, 1)).save(tmp_path / "genotype.json")
    return {"empty": tmp_path / "empty", "list_yaml": tmp_path / "list.yaml", "tiny_yaml": tmp_path / "tiny.yaml",
            "genotype": genotype}


@pytest.mark.parametrize("argv, message", [c[1:] for c in SETTINGS], ids=[c[0] for c in SETTINGS])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, files, argv, message):
    out = tmp_path / "run"
    assert main([a.format(**files) for a in argv] + ["--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def photos(folder: Path, count: int = 6, shape: tuple[int, int] = (40, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"ok{i}.png")
    return folder


def _truncated(path: Path) -> str:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def _save(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return path.name


BAD_IMAGES = {  # each adds its bad file(s) to a folder of good photos and returns the name the error must give
    "truncated-jpeg": (lambda d: _truncated(photos(d) / "bad.jpg"), "cannot read image"),
    "zero-byte": (lambda d: _write(photos(d) / "bad.png", b""), "cannot read image"),
    "not-an-image": (lambda d: _write(photos(d) / "bad.png", b"hello"), "cannot read image"),
    "float-tiff": (lambda d: _save(photos(d) / "bad.tif", np.zeros((40, 40), np.float32)),
                   "floating-point images (Pillow mode 'F')"),
    "smaller-than-patch": (lambda d: (photos(d, shape=(12, 40)), "ok")[1], "is 12x40, smaller than the 16x16 patch"),
    "too-small-to-measure": (lambda d: (photos(d, shape=(8, 40)), "ok")[1], "too small to measure: SSIM needs 11x11"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_training_images_are_named_before_anything_is_written(tmp_path, capsys, case):
    make, message = BAD_IMAGES[case]
    name = make(tmp_path / "data")
    out = tmp_path / "run"
    assert main(SMOKE + ["--set", f"data={tmp_path / 'data'}", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and name in err
    assert not out.exists()


def test_an_image_that_breaks_mid_evaluation_leaves_no_run_behind(tmp_path, capsys):
    folder = photos(tmp_path / "set", 2)
    _truncated(folder / "zz.jpg")  # listed fine, fails when decoded after the first images were scored
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "noisy", "--set", f"sets=[{folder}]", "--set", "save_images=true",
                 "--out", str(out), "--quiet"]) == 2
    assert "zz.jpg" in capsys.readouterr().err
    assert not out.exists()


def test_a_network_refuses_images_with_the_other_number_of_channels():
    for channels, other in ((1, 3), (3, 1)):
        net = Network(uniform_genotype(small_space(in_channels=channels), "conv_3x3", (0, 0, 0)))
        with pytest.raises(DataError, match=f"has {other} channel.s. but the model takes {channels}.*channels={channels}"):
            evaluate_model(net, [("img", torch.rand(other, 24, 24))], task="denoise", sigma=25)


def genotype_text(edit) -> str:
    data = uniform_genotype(preset("paper-denoise"), "conv_3x3", (0, 1, 2)).to_dict()
    edit(data)
    return json.dumps(data)


HOSTILE_GENOTYPES = [
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    ("nan-width", genotype_text(lambda d: d["space"].update(widths=[1, float("nan")])),
     "space.widths[1]: expected a finite number"),
    ("overflowing-number",
     genotype_text(lambda d: d["space"].update(widths=[1, 2])).replace('"widths": [1, 2]', '"widths": [1, 1e999]'),
     "space.widths[1]: expected a finite number, got inf"),
    ("huge-integer", genotype_text(lambda d: d["space"].update(filters=10**40)), "exceeds 4096 channels per node"),
    ("huge-layers", genotype_text(lambda d: d["space"].update(layers=10**9)), "path: expected 1000000000 levels"),
    ("bool-for-int", genotype_text(lambda d: d.update(path=[0, True, 1])), "path[1]: expected an integer, got True"),
    ("nested-space", genotype_text(lambda d: d.update(space=[1])), "space: expected a mapping of settings, got list"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in HOSTILE_GENOTYPES], ids=[c[0] for c in HOSTILE_GENOTYPES])
def test_hostile_genotype_json_is_refused(tmp_path, text, message):
    path = tmp_path / "genotype.json"
    path.write_text(text)
    with pytest.raises(GenotypeError, match=re.escape(message)):
        Genotype.load(path)


def test_genotype_files_that_are_not_json_or_too_large_are_refused(tmp_path):
    (tmp_path / "pickled.json").write_bytes(pickle.dumps({"schema": "hinas.genotype"}))
    with pytest.raises(GenotypeError, match="cannot read genotype file"):
        Genotype.load(tmp_path / "pickled.json")
    (tmp_path / "big.json").write_text(" " * (MAX_BYTES + 1))
    with pytest.raises(GenotypeError, match="far too large for a genotype file"):
        Genotype.load(tmp_path / "big.json")


class FullDiskFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.f.fileno()


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "hinas.network", "genotype": Payload(marker)}, hostile)
    with pytest.raises(GenotypeError, match="refused: it holds objects other than tensors and plain data .GLOBAL posix.system"):
        load_model(hostile)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data.*GLOBAL posix.system"):
        read_checkpoint(hostile, "search")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 2\n")
    (run / CHECKPOINT).write_bytes(hostile.read_bytes())
    assert main(["search", "--resume", str(run), "--quiet"]) == 2
    assert "refused: it holds objects other than tensors" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(hostile), "--out", str(tmp_path / "eval"), "--quiet"]) == 2
    assert not marker.exists() and not (tmp_path / "eval").exists()


def test_every_checkpoint_read_in_hinas_refuses_code():
    calls = [(p.name, m) for p in (ROOT / "hinas").rglob("*.py") for m in re.findall(r"torch\.load\(([^)]*)\)", p.read_text())]
    assert calls and all("weights_only=True" in args for _, args in calls), calls


def test_foreign_and_broken_checkpoints_are_refused(tmp_path, capsys):
    net = Network(uniform_genotype(small_space(), "conv_3x3", (0, 1, 1)))
    path = save_model(net, tmp_path / "best.pt")
    other = torch.load(path, weights_only=True)
    other["genotype"] = uniform_genotype(small_space(), "sep_conv_3x3", (0, 1, 1)).to_dict()
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(GenotypeError, match="weights do not fit the genotype it names"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": FORMAT, "kind": "search"}, tmp_path / "search.pt")
    with pytest.raises(GenotypeError, match="not a hinas network checkpoint"):
        load_model(tmp_path / "search.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a loadable checkpoint .* truncated"):
        read_checkpoint(tmp_path / "cut.pt", "search")
    torch.save({"format": FORMAT, "version": 1, "kind": "retrain"}, tmp_path / "retrain.pt")
    with pytest.raises(CheckpointError, match="a retrain checkpoint, not a search one"):
        read_checkpoint(tmp_path / "retrain.pt", "search")
    torch.save({"format": FORMAT, "version": 1, "kind": "search", "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="incomplete checkpoint, missing config, code, optimizers"):
        read_checkpoint(tmp_path / "partial.pt", "search")
    assert main(["search", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "nowhere/config.yaml: cannot read config file" in capsys.readouterr().err


def test_an_unwritable_output_folder_is_named_and_nothing_is_left(capsys):
    out = Path("/sys/hinas-run")  # sysfs refuses new folders, even to root
    assert main(SMOKE + ["--out", str(out), "--quiet"]) == 2
    assert f"cannot write the run directory {out}: " in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("one_thread")
def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    real_open, writes = open, []

    def full_disk_open(path, mode="r", *args, **kwargs):  # the third checkpoint write finds the disk full
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(f".{CHECKPOINT}.tmp"):
            writes.append(path)
            if len(writes) == 3:
                return FullDiskFile(f)
        return f

    monkeypatch.setattr(hinas.files, "open", full_disk_open, raising=False)
    run = tmp_path / "run"
    assert main(SMOKE + ["--set", "checkpoint_every=1", "--out", str(run), "--quiet"]) == 2
    assert f"cannot write {run / CHECKPOINT}: No space left on device" in capsys.readouterr().err
    assert not list(run.glob(".*.tmp")) and not (run / "metrics.json").exists()
    progress = read_checkpoint(run / CHECKPOINT, "search")["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 1)
    monkeypatch.undo()
    assert main(["search", "--resume", str(run), "--quiet"]) == 0


def test_the_table_names_only_tests_that_exist():
    table = (ROOT / "docs" / "bad_inputs.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)(?:\[([\w.-]+)\])?`", table)
    assert len(named) > 40
    for file, test, case in named:
        source = (ROOT / "tests" / file).read_text()
        assert f"def {test}(" in source, (file, test)
        assert case is None or case == "" or f'"{case}"' in source, (file, test, case)


# --- property-based: random settings, genotype JSON and checkpoint bytes ---------------------------------

LEAVES = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400) | st.floats()
          | st.text(max_size=6))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=12)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def settings_dicts(cls) -> st.SearchStrategy:
    """Mappings over the real keys (and some others) with values of every JSON type."""
    keys = [f for f in config.to_dict(cls())] + ["space", "nonsense"]
    space = st.dictionaries(st.sampled_from([*SearchSpace().to_dict(), "depth"]), JSON, max_size=4)
    return st.dictionaries(st.sampled_from(keys), JSON | space, max_size=5)


@FUZZ
@given(cls=st.sampled_from([SearchConfig, TrainConfig, EvalConfig]), data=st.data())
def test_random_settings_load_or_raise_config_error(cls, data):
    mapping = data.draw(settings_dicts(cls) | JSON)
    try:
        cfg = config.from_dict(cls, mapping, "fuzz")
    except ConfigError:
        return
    assert config.from_dict(cls, config.to_dict(cfg), "fuzz") == cfg


@FUZZ
@given(items=st.lists(st.tuples(st.sampled_from([*config.to_dict(SearchConfig()), "space.layers", "space.widths", "x.y"]),
                                 st.text(max_size=12)), max_size=4))
def test_random_overrides_resolve_or_raise_config_error(items):
    try:
        resolve(SearchConfig, "smoke", overrides=[f"{k}={v}" for k, v in items])
    except ConfigError:
        pass


def genotype_dicts() -> st.SearchStrategy:
    """A valid genotype with one field, at any depth, replaced by random JSON (or dropped)."""
    base = uniform_genotype(preset("paper-sr"), "sep_conv_3x3", (0, 1)).to_dict()
    paths = []

    def walk(node, path):
        paths.append(path)
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            walk(child, path + (key,))

    walk(base, ())

    def mutate(path, value, drop):
        data = copy.deepcopy(base)
        if not path:
            return value
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if drop and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return data

    return st.builds(mutate, st.sampled_from(paths), JSON, st.booleans())


@FUZZ
@given(data=genotype_dicts() | JSON)
def test_random_genotype_json_loads_or_raises_genotype_error(data):
    try:
        genotype = Genotype.from_json(json.dumps(data))
    except GenotypeError:
        return
    assert Genotype.from_json(genotype.to_json()) == genotype


@FUZZ
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_random_genotype_bytes_are_refused(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "genotype.json"
        path.write_bytes(raw)
        with pytest.raises(GenotypeError):
            Genotype.load(path)


@functools.cache
def network_checkpoint() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        net = Network(uniform_genotype(small_space(layers=1, nodes=1), "conv_3x3", (0,)))
        return save_model(net, Path(folder) / "best.pt").read_bytes()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4))
def test_damaged_checkpoint_bytes_are_refused(cut, flips):
    whole = network_checkpoint()
    data = bytearray(whole[: cut % len(whole)] if cut % 3 else whole)
    for at, xor in flips:
        if data:
            data[at % len(data)] ^= xor
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CHECKPOINT
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError):  # a network checkpoint, intact or not, is never a search checkpoint
            read_checkpoint(path, "search")
        try:
            load_model(path)
        except GenotypeError:
            pass

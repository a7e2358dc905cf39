"""Precision and layout are chosen once, by the engine, per phase; bf16 stays close to float32; runs record what they used."""

import json
import shutil

import pytest
import torch
from conftest import small_space, uniform_genotype

from hinas.cli import build_parser, settings
from hinas.engine.settings import TrainConfig, resolve
from hinas.errors import CheckpointError
from hinas.hardware import amp_dtype, cpu_has_bf16, memory_layout
from hinas.jobs.retrain import retrain
from hinas.nas.genotype import Genotype
from hinas.nas.network import Network, load_model
from hinas.nas.space import preset

CPU = torch.device("cpu")
BF16_FORWARD_ATOL = 0.03
"""Largest output difference of a randomly initialised net, bf16 autocast against float32, on [0,1] images. bf16 keeps
8 bits of mantissa (relative error 2^-9 per rounding); measured: about 0.01 for the small nets below."""

GRAD_COSINE = 0.95
"""Least cosine between all weights' bf16 and float32 gradients taken together (measured above 0.98 for the nets
below). A single small weight's gradient may be mostly bf16 noise, but none may be far larger than in float32:
the channels_last garbage of dilated convolutions was up to 1e35, or NaN."""
GRAD_NORM_RATIO = 4.0


def close_gradients(full: dict[str, torch.Tensor], half: dict[str, torch.Tensor]) -> None:
    assert full.keys() == half.keys()
    floor = 0.01 * max(g.norm() for g in full.values())  # weights whose true gradient is ~0 get bf16 noise
    for name, g in full.items():
        assert torch.isfinite(half[name]).all(), name
        assert half[name].norm() <= GRAD_NORM_RATIO * g.norm() + floor, name
    flat_full, flat_half = (torch.cat([v.flatten() for v in d.values()]) for d in (full, half))
    assert torch.cosine_similarity(flat_half, flat_full, dim=0) > GRAD_COSINE


def test_auto_precision_is_bf16_for_retraining_only_where_the_cpu_has_bf16(monkeypatch):
    monkeypatch.delenv("HINAS_NO_BF16", raising=False)
    expected = torch.bfloat16 if cpu_has_bf16() else None
    assert amp_dtype(CPU, "auto", "retrain") is expected
    assert amp_dtype(CPU, "auto", "search") is None  # the supernet's step is slower in bf16 (benchmarks/train_step.py)
    assert amp_dtype(CPU, "off", "retrain") is None and amp_dtype(CPU, "bf16", "search") is torch.bfloat16
    monkeypatch.setenv("HINAS_NO_BF16", "1")  # a CPU without bf16 units keeps float32
    assert not cpu_has_bf16() and amp_dtype(CPU, "auto", "retrain") is None
    assert memory_layout(CPU, "retrain") == torch.channels_last and memory_layout(CPU, "search") == torch.contiguous_format


@pytest.mark.parametrize("task", ["denoise", "sr"])
def test_bf16_forward_stays_close_to_float32_and_reconstructs_in_float32(task):
    space = small_space(task=task, scale=2 if task == "sr" else 1, in_channels=3 if task == "sr" else 1)
    net = Network(uniform_genotype(space, "conv_3x3", (0, 1, 1)), 4).eval()
    x = torch.rand(2, space.in_channels, 24, 24)
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x.contiguous(memory_format=torch.channels_last))
    assert half.dtype == torch.float32  # the residual add and the SR bicubic upscale leave autocast
    assert (half - full).abs().max() < BF16_FORWARD_ATOL


@pytest.mark.usefixtures("one_thread")
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: CPU retraining stays float32")
def test_bf16_gradients_of_dilated_convolutions_match_float32_in_the_engines_retraining_form():
    """bf16 channels_last, as the engine retrains on a CPU: every weight gets the float32 gradient to bf16 accuracy.
    oneDNN's channels_last backward of dilated convolutions returned garbage (up to 1e35, NaN at some widths) on
    torch 2.13, so :class:`hinas.nas.ops.DilatedConv2d` reads NCHW there."""
    torch.manual_seed(0)
    space = small_space(task="sr", scale=2, in_channels=1, filters=8)  # the SR decoder adds dilated depthwise ones
    net = Network(uniform_genotype(space, "dil_conv_5x5", (0, 1, 1)), 12)
    x, y = torch.rand(8, 1, 40, 40), torch.rand(8, 1, 80, 80)

    def grads(dtype):
        net.zero_grad()
        layout = memory_layout(CPU, "retrain")
        model = net.to(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(x.contiguous(memory_format=layout))
        (out.float() - y).abs().mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    full, half = grads(None), grads(torch.bfloat16)
    close_gradients(full, half)


@pytest.mark.usefixtures("one_thread")
def test_a_supernet_in_cpu_bf16_gets_the_float32_gradients_of_its_dilated_convolutions():
    """The stacked cells work in channels_last; their dilated convolutions read NCHW under CPU bf16 autocast."""
    from hinas.nas.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(small_space(filters=6))
    x, y = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)

    def grads(amp):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        (out.float() - y).abs().mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None and "weight" in n}

    full, half = grads(False), grads(True)
    close_gradients(full, half)


@pytest.fixture
def genotype_file(tmp_path):
    return uniform_genotype(preset("paper-denoise").replace(layers=2, nodes=2, filters=2), "conv_3x3", (0, 1)).save(
        tmp_path / "genotype.json")


@pytest.mark.usefixtures("one_thread")
def test_a_run_records_its_precision_and_layout_and_refuses_to_resume_under_others(tmp_path, genotype_file, monkeypatch):
    monkeypatch.delenv("HINAS_NO_BF16", raising=False)
    cfg = resolve(TrainConfig, "smoke", overrides=["device=cpu", f"genotype={genotype_file}"])
    metrics = retrain(cfg, tmp_path / "r", progress=False)
    assert (metrics["precision"], metrics["layout"], metrics["device"]) == ("bf16" if cpu_has_bf16() else "float32",
                                                                          "channels_last", "cpu")
    start = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    assert start["precision"] == metrics["precision"]
    assert Genotype.load(tmp_path / "r" / "genotype.json") == Genotype.load(genotype_file)

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units, so no other precision to resume under")
    short = resolve(TrainConfig, "smoke", overrides=["device=cpu", f"genotype={genotype_file}", "iterations=2"])
    retrain(short, tmp_path / "s", progress=False)
    (tmp_path / "s" / "metrics.json").unlink()  # now an interrupted run at its last checkpoint, computed in bf16
    monkeypatch.setenv("HINAS_NO_BF16", "1")  # resumed where auto resolves to float32
    with pytest.raises(CheckpointError, match="precision bf16 -> float32"):
        retrain(short, tmp_path / "s", progress=False, resume=True)
    assert retrain(short, tmp_path / "s", progress=False, resume=True, force=True)["precision"] == "float32"


def test_a_bare_off_read_by_yaml_as_false_selects_the_off_choice():
    assert resolve(TrainConfig, overrides=["amp=off"]).amp == "off"


def test_compile_is_a_setting_read_from_yaml_and_the_command_line(tmp_path):
    assert resolve(TrainConfig).compile is False
    assert resolve(TrainConfig, overrides=["compile=true"]).compile is True
    (tmp_path / "train.yaml").write_text("preset: smoke\ncompile: true\n")
    assert resolve(TrainConfig, file=tmp_path / "train.yaml").compile is True
    args = build_parser().parse_args(["retrain", "--preset", "smoke", "--set", "compile=true"])
    assert settings(args).compile is True


@pytest.mark.usefixtures("one_thread")
def test_a_compiled_retrain_saves_the_module_as_written_and_records_that_it_compiled(tmp_path, genotype_file):
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile's CPU back-end needs a C++ compiler (c++ or g++ on PATH); none found")
    overrides = ["device=cpu", f"genotype={genotype_file}", "iterations=2", "val_every=2"]
    metrics = retrain(resolve(TrainConfig, "smoke", overrides=[*overrides, "compile=true"]), tmp_path / "c", progress=False)
    assert metrics["compiled"] is True
    plain = retrain(resolve(TrainConfig, "smoke", overrides=overrides), tmp_path / "e", progress=False)
    assert plain["compiled"] is False
    for name, key in (("checkpoint.pt", "model"), ("best.pt", "state_dict")):
        weights = torch.load(tmp_path / "c" / name, weights_only=False)[key]
        reference = torch.load(tmp_path / "e" / name, weights_only=False)[key]
        assert not any("_orig_mod" in k for k in weights)
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}
    model = load_model(tmp_path / "c" / "best.pt")  # the ordinary loader, no compile
    with torch.no_grad():
        out = model(torch.rand(1, 1, 16, 16))
    assert out.shape == (1, 1, 16, 16) and bool(torch.isfinite(out).all())

"""``hinas restore`` end to end with a smoke-trained model, and evaluation through the inference form."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from hinas.cli import main
from hinas.data.degrade import seeded_noisy
from hinas.data.images import load_image
from hinas.engine.settings import SearchConfig, resolve
from hinas.infer.tiling import tiled_forward
from hinas.nas.genotype import Genotype
from hinas.nas.network import load_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke retrain of a genotype with every op (seconds), and a folder of noisy gray photos, one in a sub-folder."""
    root = tmp_path_factory.mktemp("restore")
    space = resolve(SearchConfig, "smoke").space
    cell = ((("sep_conv_3x3", 0), ("identity", 1)), (("dil_conv_5x5", 2), ("conv_3x3", 1)))
    Genotype(space, (0, 1), (cell, cell)).save(root / "genotype.json")
    assert main(["retrain", "--preset", "smoke", "--genotype", str(root / "genotype.json"), "--out", str(root / "retrain"),
                 "--quiet"]) == 0
    noisy = root / "noisy"
    (noisy / "sub").mkdir(parents=True)
    for name, img in [("camera", skimage.data.camera()[100:180, 120:220]), ("sub/moon", skimage.data.moon()[200:270, 150:245])]:
        x = seeded_noisy(torch.from_numpy(img).float().div(255)[None], 25, name, clip=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(noisy / f"{name}.png")
    return root


def test_restore_writes_one_png_per_input_equal_to_the_trained_network(trained, tmp_path, capsys):
    out = tmp_path / "restored"
    assert main(["restore", str(trained / "retrain"), str(trained / "noisy"), str(out), "--quiet"]) == 0
    assert "restored 2 images" in capsys.readouterr().out
    net = load_model(trained / "retrain" / "best.pt").eval()
    for name in ("camera", "sub/moon"):
        x = load_image(trained / "noisy" / f"{name}.png")
        written = load_image(out / f"{name}.png")
        expected = tiled_forward(net, x[None])[0].clamp(0, 1).mul(255).round().div(255)
        assert written.shape == x.shape
        assert (written - expected).abs().max().item() <= 1 / 255 + 1e-6  # equal up to a rare rounding flip


@pytest.mark.parametrize("backend", ["training", "onnxruntime"])
def test_tiled_restore_with_each_backend_is_close_to_whole_images(trained, tmp_path, backend):
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    assert main(["restore", str(trained / "retrain" / "best.pt"), str(trained / "noisy"), str(whole), "--quiet"]) == 0
    assert main(["restore", str(trained / "retrain"), str(trained / "noisy"), str(tiled), "--quiet", "--tile", "48",
                 "--overlap", "16", "--backend", backend]) == 0
    for name in ("camera", "sub/moon"):
        diff = (load_image(whole / f"{name}.png") - load_image(tiled / f"{name}.png")).abs()
        assert diff.mean().item() < 2 / 255  # tiles see less context near their borders, so not exactly equal


def test_restore_refuses_bad_input_before_writing_anything(trained, tmp_path, capsys):
    run, noisy = str(trained / "retrain"), str(trained / "noisy")
    color = tmp_path / "color"
    color.mkdir()
    Image.fromarray(skimage.data.astronaut()[:40, :40]).save(color / "astronaut.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "exists").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "exists" / "camera.png")
    cases = [
        ([run, str(tmp_path / "missing"), str(tmp_path / "o1")], "input folder"),
        ([run, str(empty), str(tmp_path / "o2")], "no images under"),
        ([str(tmp_path / "nothing"), noisy, str(tmp_path / "o3")], "no such checkpoint"),
        ([run, noisy, str(trained / "noisy" / "out")], "lies inside the input folder"),
        ([run, str(color), str(tmp_path / "o4")], "a RGB image, but the network restores gray images"),
        ([run, noisy, str(tmp_path / "exists")], "already holds 1 of the restored images"),
        ([run, noisy, str(tmp_path / "o5"), "--tile", "16", "--overlap", "16"], "must be smaller than tile"),
    ]
    for argv, message in cases:
        assert main(["restore", *argv, "--quiet"]) == 2, message
        assert message in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    with pytest.raises(SystemExit):
        main(["restore", run, noisy, str(tmp_path / "o6"), "--backend", "tensorrt"])


def test_evaluate_uses_the_inference_form_and_matches_the_training_form(trained, tmp_path):
    results = {}
    for backend in ("torch", "training"):
        out = tmp_path / backend
        assert main(["evaluate", "--preset", "smoke", "--model", str(trained / "retrain"), "--backend", backend,
                     "--out", str(out), "--quiet"]) == 0
        results[backend] = json.loads((out / "metrics.json").read_text())["results"][0]
    assert results["torch"]["psnr"] == pytest.approx(results["training"]["psnr"], abs=1e-3)
    assert results["torch"]["ssim"] == pytest.approx(results["training"]["ssim"], abs=1e-5)

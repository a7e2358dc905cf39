"""Hostile and careless inputs beyond the settings table: odd and huge images, files that are not files, overlapping
folders, two processes at once, full disks, broken models. Each case is listed in ``docs/bad_inputs.md``.

Every test is fast (small images, tiny networks); those that could hang or grow without bound run under an
alarm or in a subprocess whose peak memory is measured.
"""

import contextlib
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import small_space, uniform_genotype
from PIL import Image
from torch import nn

from hinas.cli import main
from hinas.data.images import MAX_PIXELS, decode, image_size, load_image, save_image
from hinas.engine.checkpoint import read_checkpoint
from hinas.engine.rundir import CHECKPOINT
from hinas.engine.settings import load_section
from hinas.errors import CheckpointError, ConfigError, GenotypeError, ModelError, OutputError
from hinas.eval.scoring import evaluate_model
from hinas.infer import tiling
from hinas.infer.export import export_onnx
from hinas.nas.baselines import DnCNN
from hinas.nas.genotype import Genotype
from hinas.nas.network import Network, load_model, save_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging: a blocking open or read of a FIFO is interrupted by the alarm."""

    def expire(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def gray(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


def png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG (gray or RGB, (H, W[, 3]) uint16) with Paeth-filtered rows, as real encoders write them."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    raw = np.ascontiguousarray(arr.reshape(h, w, c), dtype=">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int32)
    bpp = 2 * c
    left = np.pad(raw, ((0, 0), (bpp, 0)))[:, :-bpp]
    up = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    up_left = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    p = left + up - up_left
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    rows = np.concatenate([np.full((h, 1), 4), (raw - pred) % 256], axis=1).astype(np.uint8)
    _write_png(path, w, h, 16, 0 if c == 1 else 2, zlib.compress(rows.tobytes()))
    return path


def _write_png(path: Path, w: int, h: int, depth: int, colour: int, idat: bytes) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A gray denoiser, a colour x2 SR network (random weights: these tests need shapes and files, not quality),
    and a three-layer DnCNN cheap enough for large images."""
    root = tmp_path_factory.mktemp("models")
    gray_net = Network(uniform_genotype(small_space(layers=2, nodes=2), "conv_3x3", (0, 1)))
    sr_net = Network(uniform_genotype(small_space(task="sr", scale=2, in_channels=3, layers=2, nodes=2), "conv_3x3", (0, 1)))
    return {"gray": save_model(gray_net, root / "gray.pt"), "sr": save_model(sr_net, root / "sr.pt"),
            "dncnn": save_model(DnCNN(1, depth=3, channels=3), root / "dncnn.pt")}


def restore(model: Path, inputs: Path, out: Path, *extra: str) -> int:
    return main(["restore", str(model), str(inputs), str(out), "--quiet", *extra])


# --- files that are not files, and YAML that expands -------------------------------------------------------------


def test_fifos_and_devices_are_refused_at_once_by_every_command(tmp_path, models, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 2\n")
    os.mkfifo(run / CHECKPOINT)
    inputs = tmp_path / "in"
    gray(inputs / "a.png")
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"psnr": 30}')
    commands = [
        (["show", str(fifo)], "not a regular file"),
        (["retrain", "--preset", "smoke", "--genotype", str(fifo), "--out", str(tmp_path / "r")], "not a regular file"),
        (["search", "--config", str(fifo), "--out", str(tmp_path / "s")], "not a regular file"),
        (["search", "--config", os.devnull, "--out", str(tmp_path / "s")], "a character device, not a regular file"),
        (["evaluate", "--model", str(fifo), "--out", str(tmp_path / "e")], "not a regular file"),
        (["restore", str(fifo), str(inputs), str(tmp_path / "o")], "not a regular file"),
        (["aggregate", str(metrics), str(fifo)], "not a regular file"),
        (["search", "--resume", str(run)], "not a regular file"),
    ]
    with deadline():
        for argv, message in commands:
            assert main([*argv, "--quiet"] if argv[0] not in ("show", "aggregate") else argv) == 2, argv
            err = capsys.readouterr().err
            assert message in err and len(err.splitlines()) == 1, (argv, err)
        for load in (Genotype.load, load_model, lambda p: read_checkpoint(p, "search"), load_section):
            with pytest.raises((GenotypeError, CheckpointError, ConfigError), match="a FIFO .named pipe., not a regular file"):
                load(fifo)
    assert not any((tmp_path / d).exists() for d in ("r", "s", "e", "o"))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, message", [
    (BOMB, "expands, through its anchors and aliases, to more than 100000 values; refused"),
    ("epochs: &e [*e]\n", "holds an alias to a node that contains it"),
], ids=["billion-laughs", "self-alias"])
def test_yaml_that_expands_is_refused_in_one_short_line(tmp_path, capsys, text, message):
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    with deadline():
        assert main(["search", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and len(err) < 300, err
        assert main(["search", "--set", f"sigmas={text.replace(chr(10), ', ').join('{}')}", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err) < 300, err
    assert not (tmp_path / "run").exists()


# --- checkpoints ---------------------------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return os.system, ("true",)


def test_a_checkpoint_holding_code_is_refused_without_advice_to_turn_off_the_safety(tmp_path, capsys):
    hostile = tmp_path / "best.pt"
    torch.save({"format": "hinas.network", "genotype": Payload()}, hostile)
    for load, error in ((load_model, GenotypeError), (lambda p: read_checkpoint(p, "search"), CheckpointError)):
        with pytest.raises(error) as caught:
            load(hostile)
        message = str(caught.value)
        assert "refused: it holds objects other than tensors and plain data (GLOBAL posix.system)" in message
        assert "weights_only" not in message and "trust" not in message and len(message) < 300
    assert main(["evaluate", "--model", str(hostile), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "weights_only" not in capsys.readouterr().err
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle at all")  # torch's message for this opens with the same advice
    with pytest.raises(CheckpointError, match=r"not a loadable checkpoint \(Unsupported operand 110\)") as caught:
        read_checkpoint(tmp_path / "garbage.pt", "search")
    assert "weights_only" not in str(caught.value)


def test_a_truncated_checkpoint_at_resume_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--preset", "smoke", "--set", "epochs=1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    (run / "metrics.json").unlink()  # as if stopped after its checkpoint
    data = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(data[: len(data) // 2])
    assert main(["search", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: not a loadable checkpoint" in err and "it may be truncated" in err and len(err.splitlines()) == 1
    assert (run / CHECKPOINT).read_bytes() == data[: len(data) // 2]


# --- images --------------------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header_with_memory_bounded(tmp_path):
    header_only = tmp_path / "claims.png"  # a header claiming 100000 x 100000, and almost no data
    _write_png(header_only, 100_000, 100_000, 8, 0, zlib.compress(b"\0" * 1000))
    real = tmp_path / "real.png"  # 9000 x 9000 zeros: 81 Mpx (over MAX_PIXELS, under Pillow's own limit) in 80 kB
    squeeze = zlib.compressobj(9)
    row = b"\0" * 9001
    _write_png(real, 9000, 9000, 8, 0, b"".join(squeeze.compress(row) for _ in range(9000)) + squeeze.flush())
    assert real.stat().st_size < 200_000 and 9000 * 9000 > MAX_PIXELS
    probe = textwrap.dedent("""
        import resource, sys
        from hinas.data.images import load_image
        from hinas.errors import DataError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in sys.argv[1:]:
            try:
                load_image(path)
            except DataError as err:
                print(err)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(header_only), str(real)], env=ENV, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert "claims.png refused: Image size (10000000000 pixels) exceeds limit" in out[0]
    assert "9000x9000 is 81 Mpx" in out[1]
    assert int(out[2]) < 20, f"decoding grew the peak memory by {out[2]} MiB"


def test_tiny_images_smaller_than_the_receptive_field_are_restored(tmp_path, models):
    inputs = tmp_path / "in"
    gray(inputs / "one.png", 1, 1)
    gray(inputs / "thin.png", 2, 3)
    assert restore(models["gray"], inputs, tmp_path / "out") == 0
    assert image_size(tmp_path / "out" / "one.png") == (1, 1) and image_size(tmp_path / "out" / "thin.png") == (2, 3)
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.new("RGB", (1, 1), (200, 10, 50)).save(colour / "dot.png")
    assert restore(models["sr"], colour, tmp_path / "sr") == 0
    assert image_size(tmp_path / "sr" / "dot.png") == (2, 2)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :4] = 255  # a bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "turned.jpg")
    assert img.shape == (3, 16, 8) and image_size(tmp_path / "turned.jpg") == (16, 8)
    assert img[:, :4].mean() > 0.9 and img[:, -4:].mean() < 0.1  # the left edge is now the top


def test_cmyk_and_palette_images_become_rgb(tmp_path):
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in print colours
    palette = Image.new("P", (6, 4))
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.save(tmp_path / "palette.png")
    palette.save(tmp_path / "palette.gif")
    red = load_image(tmp_path / "cmyk.jpg")
    assert red.shape == (3, 4, 6) and red[0].mean() > 0.9 and red[1:].mean() < 0.1
    for name in ("palette.png", "palette.gif"):
        blue = load_image(tmp_path / name)
        assert blue.shape == (3, 4, 6) and torch.equal(blue[2], torch.ones(4, 6)) and blue[:2].max() == 0


def test_sixteen_bit_inputs_come_out_as_sixteen_bit_pngs(tmp_path, models, capsys):
    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    deep = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    png16(inputs / "deep.png", deep)
    gray(inputs / "flat.png", 12, 10)
    assert restore(models["gray"], inputs, tmp_path / "out") == 0
    assert "16-bit where the input had 16 bits, 8-bit otherwise" in capsys.readouterr().out
    assert decode(tmp_path / "out" / "deep.png").bits == 16 and Image.open(tmp_path / "out" / "deep.png").mode == "I;16"
    assert decode(tmp_path / "out" / "flat.png").bits == 8
    net = load_model(models["gray"]).eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(deep.astype(np.float32) / 65535)[None, None])[0].clamp(0, 1)
    written = decode(tmp_path / "out" / "deep.png").image
    assert (written - expected).abs().max() <= 0.5 / 65535 + 1e-6  # 16-bit precision, not 8

    colour = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    png16(tmp_path / "colour.png", colour)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb", compression="zlib")
    for name in ("colour.png", "colour.tif"):
        got = decode(tmp_path / name)
        assert got.bits == 16 and torch.equal((got.image * 65535).round().to(torch.int64),
                                              torch.from_numpy(colour.astype(np.int64)).permute(2, 0, 1))
    save_image(got.image, tmp_path / "back.png", bits=16)
    assert torch.equal(decode(tmp_path / "back.png").image, got.image)


def test_animated_gif_and_multipage_tiff_give_their_first_frame_and_say_so(tmp_path, caplog):
    frames = [Image.new("L", (5, 4), v) for v in (40, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        for name in ("anim.gif", "pages.tif"):
            img = load_image(tmp_path / name)
            assert img.shape[-2:] == (4, 5) and img.mean().item() == pytest.approx(40 / 255, abs=1 / 255)
    assert caplog.text.count("3 frames; only the first is used") == 2


def test_alpha_is_dropped_and_said(tmp_path, models, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("LA", (8, 6), (120, 30)).save(inputs / "clear.png")
    with caplog.at_level(logging.WARNING):
        assert restore(models["gray"], inputs, tmp_path / "out") == 0
    assert "alpha (transparency) dropped; the image is read as opaque" in caplog.text
    assert Image.open(tmp_path / "out" / "clear.png").mode == "L"


def test_odd_names_folders_named_like_images_fifos_and_symlink_loops(tmp_path, models, caplog):
    inputs = tmp_path / "entrée brute"
    gray(inputs / "café au lait ünï 1.png")
    gray(inputs / "x.png" / "inside.png")  # a folder named like an image: searched like any folder
    os.mkfifo(inputs / "pipe.png")
    os.symlink("loop.png", inputs / "loop.png")
    os.symlink("../entrée brute", inputs / "x.png" / "back")  # a folder loop: never followed
    out = tmp_path / "sortie à côté"
    with deadline(), caplog.at_level(logging.WARNING):
        assert restore(models["gray"], inputs, out) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.is_file()) == ["café au lait ünï 1.png",
                                                                                                  "x.png/inside.png"]
    assert "pipe.png: skipped: not a regular file" in caplog.text and "loop.png: skipped" in caplog.text


def test_large_images_without_tile_are_tiled_within_the_stated_memory_bound(tmp_path, models):
    side = 3000
    inputs = tmp_path / "in"
    inputs.mkdir()
    ramp = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    Image.fromarray(ramp).save(inputs / "large.png", compress_level=1)
    budget = 64 << 20
    probe = textwrap.dedent(f"""
        import logging, resource
        from hinas.infer import tiling
        from hinas.infer.folder import restore_folder
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        tiling.FORWARD_BUDGET = {budget}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        restore_folder({str(models['dncnn'])!r}, {str(inputs)!r}, {str(tmp_path / 'out')!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=300, check=True)
    assert "restoring it in 680x680 tiles" in done.stderr, done.stderr
    bound = (budget + 20 * side * side) / 2**20 + 100  # tiles, plus the image in and out (float32) and the tile weights
    grew = int(done.stdout.split()[-1])
    print(f"peak memory growth restoring a {side}x{side} image: {grew} MiB (bound {bound:.0f} MiB)")
    assert grew < bound
    assert image_size(tmp_path / "out" / "large.png") == (side, side)


def test_evaluate_model_tiles_images_too_large_to_run_whole(monkeypatch):
    sizes = []

    class Pointwise(nn.Conv2d):
        def forward(self, x):
            sizes.append(tuple(x.shape[-2:]))
            return super().forward(x)

    model = Pointwise(1, 1, 1)
    image = [("big", torch.rand(1, 300, 200))]
    whole = evaluate_model(model, image, task="denoise", sigma=25)
    monkeypatch.setattr(tiling, "FORWARD_BUDGET", 4 * 12 * 100 * 100)  # a 100 x 100 forward fits
    sizes.clear()
    tiled = evaluate_model(model, image, task="denoise", sigma=25)
    assert max(max(s) for s in sizes) <= 100 and len(sizes) > 6
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)  # a 1x1 convolution is the same in tiles


# --- broken models --------------------------------------------------------------------------------------------------


class Broken(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x):
        return {"nan": x * float("nan"), "inf": x / 0, "shape": x[..., 1:, :], "int": (x * 255).to(torch.uint8),
                "double": x.double(), "tuple": (x,), "channels": x.repeat(1, 3, 1, 1)}[self.how]


@pytest.mark.parametrize("how, message", [
    ("nan", "returned NaN or infinite values"), ("inf", "returned NaN or infinite values"),
    ("shape", r"returned shape \(1, 1, 47, 48\) for an input of shape \(1, 1, 48, 48\)"),
    ("channels", r"returned shape \(1, 3, 48, 48\)"), ("int", "returned torch.uint8; expected torch.float32"),
    ("double", "returned torch.float64; expected torch.float32"), ("tuple", "returned tuple, not a tensor"),
])
def test_evaluate_model_refuses_outputs_that_are_not_finite_images(how, message):
    with pytest.raises(ModelError, match=f"evaluate_model: model on image img: the model {message}"):
        evaluate_model(Broken(how), [("img", torch.rand(1, 48, 48))], task="denoise", sigma=25)


def test_restore_and_evaluate_with_a_network_that_returns_nan_fail_and_write_nothing(tmp_path, capsys):
    net = DnCNN(1, depth=3, channels=3)
    with torch.no_grad():
        net.body[-1].weight.fill_(float("nan"))
    model = save_model(net, tmp_path / "nan.pt")
    inputs = tmp_path / "in"
    gray(inputs / "a.png")
    assert restore(model, inputs, tmp_path / "out") == 2
    assert "a.png: the model returned NaN or infinite values" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.png"))
    assert main(["evaluate", "--preset", "smoke", "--model", str(model), "--out", str(tmp_path / "eval"), "--quiet"]) == 2
    assert "the model returned NaN or infinite values" in capsys.readouterr().err and not (tmp_path / "eval").exists()


# --- folders ---------------------------------------------------------------------------------------------------------


def test_restore_folders_that_overlap_or_cannot_be_written(tmp_path, models, capsys):
    inputs = tmp_path / "in"
    originals = {p: p.read_bytes() for p in (gray(inputs / "a.png"), gray(inputs / "in" / "b.png", seed=1))}
    (tmp_path / "file").write_text("not a folder")
    os.symlink("loop", tmp_path / "loop")
    cases = [
        ([str(inputs)], "lies inside the input folder"),
        ([str(inputs), "--overwrite"], "lies inside the input folder"),
        ([str(inputs / "restored"), "--overwrite"], "lies inside the input folder"),
        ([str(tmp_path), "--overwrite"], "would be written into the input folder"),  # in/in/b.png -> in/b.png
        ([str(tmp_path / "file")], "is a file, not a folder"),
        ([str(tmp_path / "loop")], "cannot follow this path"),
        (["/proc/hinas-restored"], "cannot create the output folder /proc/hinas-restored"),
        (["/proc"], "cannot write into the output folder /proc"),
        ([str(tmp_path / ("n" * 300))], "a name is longer than 255 bytes"),
        ([str(tmp_path / "/".join(["d" * 200] * 21))], "the path is 4096 bytes or longer"),
    ]
    for extra, message in cases:
        assert restore(models["gray"], inputs, Path(extra[0]), *extra[1:]) == 2, message
        assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in originals} == originals and sorted(inputs.rglob("*")) == sorted(
        [inputs / "a.png", inputs / "in", inputs / "in" / "b.png"])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "in").write_text("a file where in/b.png needs a folder")
    assert restore(models["gray"], inputs, tmp_path / "o") == 2
    assert "o/in is a file where" in capsys.readouterr().err and not (tmp_path / "o" / "a.png").exists()
    parent = tmp_path / "p"
    gray(parent / "noisy" / "c.png")
    assert restore(models["gray"], parent / "noisy", parent) == 0  # containing the input folder, writing beside it
    assert (parent / "c.png").exists() and len(list(parent.rglob("*.png"))) == 2
    assert restore(models["gray"], parent / "noisy", parent) == 2
    assert "already holds 1 of the restored images" in capsys.readouterr().err


def test_a_long_input_name_is_restored(tmp_path, models):
    name = "x" * 251 + ".png"  # 255 bytes: the longest name; its temporary file gets a short name
    gray(tmp_path / "in" / name)
    assert restore(models["gray"], tmp_path / "in", tmp_path / "out") == 0
    assert (tmp_path / "out" / name).is_file() and not list((tmp_path / "out").glob(".*"))


def test_every_input_is_checked_before_the_first_output(tmp_path, models, capsys):
    inputs = tmp_path / "in"
    gray(inputs / "a.png")
    data = gray(inputs / "z.png", 64, 64).read_bytes()
    (inputs / "z.png").write_bytes(data[: len(data) // 2])
    assert restore(models["gray"], inputs, tmp_path / "out") == 2
    assert "cannot read image" in capsys.readouterr().err and not list((tmp_path / "out").rglob("*.png"))


def test_a_file_size_limit_leaves_no_partial_image(tmp_path, models):
    inputs = tmp_path / "in"
    gray(inputs / "noise.png", 96, 96)
    out = tmp_path / "out"
    limit = textwrap.dedent(f"""
        import resource, sys
        from hinas.cli import main
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))  # a restored 96 x 96 noisy PNG needs ~9 kB
        sys.exit(main(["restore", {str(models['gray'])!r}, {str(inputs)!r}, {str(out)!r}, "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", limit], env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "File too large" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert out.is_dir() and not list(out.iterdir())


def test_a_file_size_limit_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path):
    run = tmp_path / "run"
    limited = textwrap.dedent(f"""
        import resource, sys
        import hinas.files as files
        from hinas.cli import main
        real = files.atomic_write_bytes
        def write(path, data):
            real(path, data)
            if path.name == "checkpoint.pt":  # the first checkpoint is down: the limit falls below the size of the next
                resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, len(data) // 2))
        files.atomic_write_bytes = write
        sys.exit(main(["search", "--preset", "smoke", "--set", "checkpoint_every=1", "--out", {str(run)!r}, "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", limited], env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and f"cannot write {run / CHECKPOINT}: File too large" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not list(run.glob(".*.tmp")) and not (run / "metrics.json").exists()
    progress = read_checkpoint(run / CHECKPOINT, "search")["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 0)
    assert main(["search", "--resume", str(run), "--quiet"]) == 0


# --- two processes at once -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def held(folder: Path):
    """Another process holding hinas's lock on ``folder``, as a run or a restore does while it lasts."""
    code = (f"from hinas.files import lock_folder; lock_folder({str(folder)!r}); print('locked', flush=True); "
            "import time; time.sleep(120)")
    other = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        yield
    finally:
        other.kill()
        other.wait()


def test_a_run_directory_in_use_is_refused_to_a_second_process(tmp_path, models, capsys):
    run = tmp_path / "run"
    assert main(["search", "--preset", "smoke", "--set", "epochs=1", "--out", str(run), "--quiet"]) == 0
    (run / "metrics.json").unlink()  # an interrupted run, still running in another process
    before = {p: p.read_bytes() for p in run.iterdir() if p.is_file()}
    inputs = tmp_path / "in"
    gray(inputs / "a.png")
    with held(run):
        for argv in (["search", "--resume", str(run)], ["search", "--preset", "smoke", "--out", str(run), "--overwrite"],
                     ["evaluate", "--model", "noisy", "--preset", "smoke", "--out", str(run), "--overwrite"]):
            assert main([*argv, "--quiet"]) == 2, argv
            assert f"{run} is in use by another hinas process" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (tmp_path / "out").mkdir()
    with held(tmp_path / "out"):
        assert restore(models["gray"], inputs, tmp_path / "out") == 2
        assert "is in use by another hinas process" in capsys.readouterr().err
    assert main(["search", "--resume", str(run), "--quiet"]) == 0  # once the other process is gone


def test_overwrite_leaves_no_file_of_the_old_run(tmp_path, capsys):
    run = tmp_path / "eval"
    base = ["evaluate", "--model", "noisy", "--preset", "smoke", "--out", str(run), "--quiet"]
    assert main([*base, "--set", "save_images=true"]) == 0
    (run / "notes.txt").write_text("left by the old run")
    assert list((run / "images").rglob("*.png"))
    assert main([*base, "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "per_image.csv"]


# --- full disks ------------------------------------------------------------------------------------------------------


def test_a_full_disk_at_the_metrics_write_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import hinas.files

    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".metrics.json.tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(hinas.files, "open", full_disk_open, raising=False)
    run = tmp_path / "eval"
    assert main(["evaluate", "--model", "noisy", "--preset", "smoke", "--out", str(run), "--quiet"]) == 2
    assert f"cannot write {run / 'metrics.json'}: No space left on device" in capsys.readouterr().err
    assert not run.exists()


# --- the Python API -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [0, -3, 10**6, 2.5, True])
def test_absurd_network_sizes_name_the_argument(filters):
    with pytest.raises(ConfigError, match=f"Network: filters must be None .* got {filters!r}"):
        Network(uniform_genotype(small_space(), "conv_3x3", (0, 1, 1)), filters)


def test_api_misuse_names_the_argument(tmp_path):
    with pytest.raises(GenotypeError, match="Network: genotype must be a Genotype"):
        Network(small_space())
    with pytest.raises(GenotypeError, match=f"{tmp_path}: cannot read genotype file: it is a directory, not a regular file"):
        Genotype.load(tmp_path)
    net = Network(uniform_genotype(small_space(layers=1, nodes=1), "conv_3x3", (0,)))
    with pytest.raises(OutputError, match="export_onnx: path: cannot write /proc/net.onnx"):
        export_onnx(net, "/proc/net.onnx", size=(16, 16))
    with pytest.raises(OutputError, match="export_onnx: path: cannot create the folder of /sys/hinas/net.onnx"):
        export_onnx(net, "/sys/hinas/net.onnx", size=(16, 16))
    with pytest.raises(ConfigError, match="bits must be 8 or 16"):
        save_image(torch.zeros(1, 2, 2), tmp_path / "x.png", bits=12)

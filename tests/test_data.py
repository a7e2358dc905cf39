import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from hinas.data.degrade import sr_pair
from hinas.data.images import (
    EMBEDDED,
    NAMED_SETS,
    ImageSet,
    PatchDataset,
    data_root,
    embedded_images,
    embedded_split,
    folder_images,
    in_memory,
    load_image,
    load_images,
    named_set,
    save_image,
    split_images,
)
from hinas.errors import ConfigError, DataError


def skimage_array(name: str) -> np.ndarray:
    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def as_uint8(t: torch.Tensor) -> np.ndarray:
    arr = (t * 255).round().byte().numpy().transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()[100:164, 200:280]


def test_embedded_images_load_as_scikit_image_reads_them():
    images = embedded_images()
    assert images.names == tuple(sorted(EMBEDDED))
    for name, img in images:
        assert img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        np.testing.assert_array_equal(as_uint8(img), skimage_array(name), err_msg=name)


def test_embedded_split_is_fixed_and_disjoint():
    train, val = embedded_split()
    assert (train, val) == embedded_split()
    assert not set(train.names) & set(val.names)
    assert set(train.names) | set(val.names) == set(EMBEDDED)
    assert len(val) == 4 and {img.shape[0] for _, img in val} == {1, 3}
    gray_train, _ = embedded_split(channels=1)
    assert gray_train[0][1].shape[0] == 1


def test_folder_images_recursive_sorted_mixed_formats(tmp_path, photo):
    save(tmp_path / "b" / "deep" / "x.png", photo)
    save(tmp_path / "b" / "y.jpg", photo, quality=95)
    save(tmp_path / "a.bmp", photo)
    save(tmp_path / "c.TIF", photo[..., 0])
    (tmp_path / "notes.txt").write_text("not an image")
    images = folder_images(tmp_path)
    assert images.names == ("a", "b/deep/x", "b/y", "c")
    loaded = dict(images)
    for name in ("a", "b/deep/x"):
        np.testing.assert_array_equal(as_uint8(loaded[name]), photo)
    assert np.abs(as_uint8(loaded["b/y"]).astype(int) - photo).mean() < 3
    assert loaded["c"].shape == (1, 64, 80)
    assert folder_images(tmp_path, channels=1)[0][1].shape == (1, 64, 80)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images under .*empty.*\.png"):
        folder_images(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere"):
        folder_images(tmp_path / "nowhere")


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    arr = np.array([[0, 257, 1000], [32768, 65534, 65535]], dtype=np.uint16)
    img = load_image(save(tmp_path / "deep.png", arr))
    assert img.shape == (1, 2, 3) and img.dtype == torch.float32
    assert torch.equal(img[0], torch.from_numpy(arr.astype(np.float32) / 65535))
    assert load_image(tmp_path / "deep.png", channels=3).shape == (3, 2, 3)


def test_palette_and_rgba_become_rgb(tmp_path, photo):
    palette = Image.fromarray(photo).quantize(16)
    palette.save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(as_uint8(img), np.asarray(palette.convert("RGB")))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    img = load_image(save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(as_uint8(img), photo)


def test_channel_conversions_use_pillow_luma(tmp_path, photo):
    path = save(tmp_path / "c.png", photo)
    gray = load_image(path, channels=1)
    np.testing.assert_array_equal(as_uint8(gray), np.asarray(Image.fromarray(photo).convert("L")))
    gray_path = save(tmp_path / "g.png", photo[..., 1])
    assert torch.equal(load_image(gray_path, channels=3), load_image(gray_path).repeat(3, 1, 1))
    with pytest.raises(ConfigError, match="channels"):
        load_image(path, channels=2)


def test_broken_files_name_the_file(tmp_path, photo):
    jpeg = save(tmp_path / "full.jpg", photo)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*expected a complete"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    (tmp_path / "zero.png").touch()
    with pytest.raises(DataError, match=r"zero\.png"):
        load_image(tmp_path / "zero.png")
    with pytest.raises(DataError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")


def pairs(*shapes) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(f"img{i}", torch.rand(shape, generator=g)) for i, shape in enumerate(shapes)]


@pytest.mark.parametrize("channels", [1, 3])
def test_denoise_patches(channels):
    images = pairs((channels, 70, 90), (channels, 50, 60))
    ds = PatchDataset(images, 32, task="denoise", sigma=(0, 50), rescale=(0.8, 1.2), length=40)
    assert len(ds) == 40
    residual_stds = set()
    for i in range(len(ds)):
        noisy, clean = ds[i]
        assert noisy.shape == clean.shape == (channels, 32, 32)
        assert 0 <= clean.min() and clean.max() <= 1
        residual_stds.add(round((noisy - clean).std().item() * 255 / 10) * 10)
    assert residual_stds == {0, 50}  # sigma drawn per patch from the set


def test_denoise_patches_are_exact_crops_unless_rescaled():
    (name, img), = pairs((1, 60, 60))
    plain = PatchDataset([(name, img)], 16, task="denoise", augment=False, length=8)
    for i in range(len(plain)):
        clean = plain[i][1]
        windows = img[0].unfold(0, 16, 1).unfold(1, 16, 1)
        assert (windows == clean[0]).all(dim=(-1, -2)).any()
    rescaled = PatchDataset([(name, img)], 16, task="denoise", augment=False, rescale=(0.8, 1.2), length=8)
    assert not any(torch.equal(rescaled[i][1], plain[i][1]) for i in range(8))


def test_patches_repeat_bit_for_bit_with_any_number_of_workers():
    ds = PatchDataset(pairs((3, 70, 90), (3, 64, 64)), 24, task="denoise", sigma=(30, 50, 70), length=12, seed=5)
    single = [torch.cat(batch) for batch in DataLoader(ds, batch_size=4)]
    torch.manual_seed(999)
    workers = [torch.cat(batch) for batch in DataLoader(ds, batch_size=4, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(single, workers))
    other = PatchDataset(pairs((3, 70, 90), (3, 64, 64)), 24, task="denoise", sigma=(30, 50, 70), length=12, seed=6)
    assert not torch.equal(ds[0][1], other[0][1])
    first = ds[0][1]
    ds.set_epoch(1)
    assert not torch.equal(ds[0][1], first)
    batches = [torch.cat(next(iter(DataLoader(ds, batch_size=4, num_workers=n)))) for n in (0, 2)]
    assert torch.equal(*batches) and torch.equal(batches[0][4], ds[0][1])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_patches_match_the_whole_image_downscale(scale):
    name, img = pairs((3, 20 * scale + 5, 24 * scale + 2))[0]
    lr_full, hr_full = sr_pair(img, scale)
    ds = PatchDataset([(name, img)], 8, task="sr", scale=scale, augment=False, length=6)
    for i in range(len(ds)):
        lr, hr = ds[i]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 8 * scale, 8 * scale)
        hits = [
            (t, left)
            for t in range(0, hr_full.shape[1] - 8 * scale + 1, scale)
            for left in range(0, hr_full.shape[2] - 8 * scale + 1, scale)
            if torch.equal(hr_full[:, t : t + 8 * scale, left : left + 8 * scale], hr)
        ]
        (t, left), = hits
        expected = lr_full[:, t // scale : t // scale + 8, left // scale : left // scale + 8]
        assert torch.allclose(lr, expected, atol=1e-6)


def test_augmented_sr_patches_stay_aligned():
    ds = PatchDataset(pairs((1, 80, 80)), 10, task="sr", scale=4, length=16)
    for i in range(len(ds)):
        lr, hr = ds[i]
        assert lr.shape == (1, 10, 10) and hr.shape == (1, 40, 40)
        coarse = hr.reshape(1, 10, 4, 10, 4).mean(dim=(2, 4))
        assert torch.corrcoef(torch.stack([coarse.flatten(), lr.flatten()]))[0, 1] > 0.3


def test_too_small_images_are_named(tmp_path):
    with pytest.raises(DataError, match=r"img1 is 20x30, smaller than the 32x32 patch"):
        PatchDataset(pairs((1, 40, 40), (1, 20, 30)), 32, task="denoise")
    with pytest.raises(DataError, match=r"img0 is 40x40.*x3 \(48x48 HR\)"):
        PatchDataset(pairs((3, 40, 40)), 16, task="sr", scale=3)
    small = save(tmp_path / "tiny" / "small.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=rf"{small} is 10x12"):
        PatchDataset(folder_images(small.parent), 16, task="denoise")
    with pytest.raises(ConfigError, match="rescale is for denoising"):
        PatchDataset(pairs((3, 40, 40)), 8, task="sr", scale=2, rescale=(0.8, 1.2))


def test_named_set_errors_say_where_to_look(tmp_path, monkeypatch):
    monkeypatch.delenv("HINAS_DATA_ROOT", raising=False)
    assert data_root() is None
    with pytest.raises(DataError, match="HINAS_DATA_ROOT"):
        named_set("Set5")
    with pytest.raises(DataError, match=r"'Urban100' not found: looked in .*Urban100.*data_root="):
        named_set("Urban100", tmp_path)
    folder = tmp_path / "Set5" / "HR"
    for i in range(3):
        save(folder / f"{i}.png", np.zeros((8, 8), np.uint8))
    (folder / "broken.png").touch()
    with pytest.raises(DataError, match=r"found 4 images, expected 5; unreadable: .*broken\.png"):
        named_set("Set5", tmp_path)
    with pytest.raises(ConfigError, match="unknown data set 'Set6'"):
        named_set("Set6", tmp_path)


@pytest.fixture(scope="module")
def root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("HINAS_DATA_ROOT is not set; point it at a folder of the standard sets to check them")
    return root


@pytest.mark.parametrize("name", sorted(NAMED_SETS))
def test_named_sets_resolve_under_the_data_root(root, name):
    spec = NAMED_SETS[name]
    missing = [f for f in spec.folders if not (root / f).is_dir()]
    if missing:
        pytest.skip(f"{name} is not in {root} (looked for {', '.join(missing)})")
    images = named_set(name)
    assert isinstance(images, ImageSet) and len(images) == spec.count
    _, first = images[0]
    assert first.shape[0] in ((1, 3) if spec.channels is None else (spec.channels,))


def test_benchmark_counts(root):
    expected = {"Set5": 5, "Set14": 14, "B100": 100, "Set12": 12, "BSD68": 68, "CBSD68": 68, "BSD500-trainval": 300}
    assert {name: len(named_set(name, root)) for name in expected} == expected
    set14 = dict(named_set("Set14", root))
    assert set14["bridge"].shape[0] == 1 and set14["man"].shape[0] == 3  # kept as stored


def test_load_images_by_config_name(tmp_path, photo):
    assert load_images("embedded-val").names == embedded_split()[1].names
    assert len(load_images("embedded")) == len(EMBEDDED)
    save(tmp_path / "pics" / "p.png", photo)
    assert load_images(str(tmp_path / "pics")).names == ("p",)
    with pytest.raises(DataError, match="unknown data 'NoSuchSet'.*Set5"):
        load_images("NoSuchSet")


def test_split_images_is_seeded_and_disjoint():
    images = embedded_images()
    weight, arch, val = split_images(images, 4, seed=3)
    assert (weight, arch, val) == split_images(images, 4, seed=3)
    assert split_images(images, 4, seed=4) != (weight, arch, val)
    assert (len(weight), len(arch), len(val)) == (6, 6, 4)
    assert sorted(weight.names + arch.names + val.names) == sorted(images.names)
    assert (weight + arch).names == weight.names + arch.names
    with pytest.raises(ConfigError, match="val_images=15"):
        split_images(images, 15, seed=0)


def test_save_image_round_trips_uint8(tmp_path, photo):
    img = load_image(save(tmp_path / "in.png", photo))
    save_image(img + 0.4 / 255, tmp_path / "out" / "x.png")
    assert torch.equal(load_image(tmp_path / "out" / "x.png"), img)
    save_image(img[:1], tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").shape == (1, 64, 80)


def eight_bit(*shapes) -> list[tuple[str, torch.Tensor]]:
    """Float images on the 1/255 grid, as decoding 8-bit files gives them."""
    g = torch.Generator().manual_seed(1)
    return [(f"img{i}", torch.randint(0, 256, s, dtype=torch.uint8, generator=g).float() / 255) for i, s in enumerate(shapes)]


def test_in_memory_keeps_8bit_images_as_uint8_and_gives_back_the_decoded_floats(tmp_path, photo):
    save(tmp_path / "a.png", photo)
    save(tmp_path / "b.png", photo[..., 1])
    save(tmp_path / "c.png", (photo[..., 0].astype(np.uint16) * 257 + 1))
    images = folder_images(tmp_path)
    held = in_memory(images)
    assert [t.dtype for t in held.stored] == [torch.uint8, torch.uint8, torch.float32]  # 16-bit stays float
    assert len(held) == 3 and held.names == images.names
    for (name, img), (same, back) in zip(images, held):
        assert name == same and back.dtype == torch.float32 and torch.equal(back, img)
    for (_, img), (_, back) in zip(images, in_memory(images, crop=32)):
        top, left = (img.shape[1] - 32) // 2, (img.shape[2] - 32) // 2
        assert torch.equal(back, img[:, top : top + 32, left : left + 32])
    (_, grid), = eight_bit((3, 8, 8))
    for off_grid in (grid + 0.25 / 255, grid * 256 / 255, grid - 1 / 255):  # between levels, above 1, below 0
        (stored,) = in_memory([("x", off_grid)]).stored
        assert stored.dtype == torch.float32 and torch.equal(stored, off_grid)
    levels = (grid * 255).round().byte()
    kept = in_memory([("x", levels)])  # decoded as uint8 already
    assert torch.equal(kept.stored[0], levels) and torch.equal(kept[0][1], grid)
    assert torch.equal(pickle.loads(pickle.dumps(held))[0][1], held[0][1])  # as spawned DataLoader workers get it


@pytest.mark.parametrize(
    "task, scale, rescale", [("denoise", 1, None), ("denoise", 1, (0.8, 1.2)), ("sr", 2, None), ("sr", 3, None)]
)
def test_patches_from_uint8_storage_equal_the_float_path(task, scale, rescale):
    images = eight_bit((3, 90, 100), (3, 75, 81))
    kw = {"task": task, "scale": scale, "rescale": rescale, "sigma": (15, 50), "length": 24, "seed": 3}
    floats, held = PatchDataset(images, 12, **kw), PatchDataset(in_memory(images), 12, **kw)
    assert all(t.dtype == torch.uint8 for t in held.images.stored)
    for i in range(len(floats)):
        (a, b), (c, d) = floats[i], held[i]
        assert a.dtype == c.dtype == torch.float32 and torch.equal(a, c) and torch.equal(b, d), i


@pytest.mark.skipif(sys.platform != "linux", reason="resident memory is read from /proc")
def test_holding_a_large_set_costs_at_most_a_third_of_float32(tmp_path):
    """Peak RSS growth of loading through in_memory, in fresh processes (benchmarks/data_memory.py)."""
    out = tmp_path / "memory.json"
    script = Path(__file__).parents[1] / "benchmarks" / "data_memory.py"
    subprocess.run([sys.executable, str(script), "--images", "120", "--height", "300", "--width", "400", "--json", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    float_bytes, rows = result["float32_bytes"], result["rows"]
    assert float_bytes == 120 * 3 * 300 * 400 * 4 and rows["uint8"]["held_bytes"] == float_bytes // 4
    assert rows["float32"]["peak_growth_bytes"] >= float_bytes  # the measurement sees what is held
    init = 12 << 20  # first use of torch's kernels and allocator, measured about 9 MB, whatever the set
    assert rows["uint8"]["peak_growth_bytes"] <= float_bytes / 3 + init

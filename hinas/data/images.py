"""Images from disk and the random (degraded, clean) training patches made from them.

Three sources: the natural photos shipped inside the scikit-image wheel (a
default that needs no download), any folder of images, and the standard
benchmark sets resolved under a data root (``HINAS_DATA_ROOT`` or an
argument). Every failure names the file or folder and what would be valid.
Patch sampling draws from a generator seeded by a hash of (seed, epoch, index),
so a run is repeatable bit for bit whatever the number of DataLoader workers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from hinas.data.degrade import add_noise, bicubic_down, quantize, stable_seed
from hinas.errors import ConfigError, DataError, OutputError
from hinas.files import atomic_write_bytes, open_regular
from hinas.nas.resize import imresize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_GRAY = ("1", "L", "LA", "La")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_LOW_BYTES = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_WIDE_COLOUR = {f"{m};16{order}": f"{m};16{low}" for m in ("RGB", "RGBA") for order, low in _LOW_BYTES.items()}
"""Raw modes of 16-bit colour files (PNG, TIFF), which Pillow cuts to their high bytes, and the raw mode of the
other byte order, which unpacks the low bytes instead."""
MAX_PIXELS = 8192 * 8192
"""Largest image decoded (67 Mpx: 0.8 GiB as a float32 RGB tensor). Larger ones, and decompression bombs whose
header claims billions of pixels, are refused from the header before a single pixel is decoded."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """A decoded image (float32 (C, H, W) in [0, 1]), the bit depth it was stored with, and what decoding left out."""

    image: torch.Tensor
    bits: int
    notes: tuple[str, ...]


def load_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """A float32 (C, H, W) image in [0, 1]; ``channels`` None keeps the file's own (1 gray, 3 colour).

    See :func:`decode`; what it leaves out (later frames, alpha) is logged as a warning.
    """
    decoded = decode(path, channels)
    for note in decoded.notes:
        log.warning("%s: %s", path, note)
    return decoded.image


def decode(path: str | Path, channels: int | None = None) -> Decoded:
    """The image at ``path``, upright, with its bit depth; refused from its header when larger than ``MAX_PIXELS``.

    16-bit images (gray, and colour PNG or TIFF, which Pillow alone cuts to 8 bits)
    are divided by 65535 (Pillow's 32-bit 'I' mode is read as 16-bit too), others by
    255. The EXIF orientation is applied, as photo viewers do. Palette, CMYK and alpha
    images become RGB, alpha dropped (restoration targets are opaque); multi-frame
    files (animated GIF, multi-page TIFF) give their first frame. Both are noted.
    Colour to gray is Pillow's 'L' conversion, ITU-R 601-2 luma (0.299 R + 0.587 G +
    0.114 B) rounded to 8 bits; gray to colour repeats the plane. Truncated files are
    errors, never silently padded. Only regular files are read: never a FIFO or device.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be None, 1 or 3, got {channels!r}")
    with _open(path) as im:
        notes = []
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames; only the first is used")
        if im.mode in _ALPHA or "transparency" in im.info:
            notes.append("alpha (transparency) dropped; the image is read as opaque")
        wide = channels != 1 and bool(im.tile) and all(_rawmode(t.args) in _WIDE_COLOUR for t in im.tile)
        bits = 16 if wide or im.mode in _SIXTEEN_BIT else 8
        try:
            if wide:
                arr = _wide_array(path)
            else:
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # upright without a copy of the pixels
        except DataError:
            raise
        except _READ_ERRORS as e:
            raise DataError(f"cannot read image {path}: {e}; expected a complete PNG, JPEG, BMP or TIFF file") from e
        if not wide:
            arr = _to_array(im, path, channels)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return Decoded(torch.from_numpy(arr), bits, tuple(notes))


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """The image at ``path`` with only its header read; refused when not a regular file or larger than ``MAX_PIXELS``."""
    with open_regular(path, "image", DataError) as f:
        try:
            im = Image.open(f)
        except Image.DecompressionBombError as e:
            raise DataError(f"image {path} refused: {e} (hinas decodes at most {MAX_PIXELS} pixels)") from None
        except _READ_ERRORS as e:
            raise DataError(f"cannot read image {path}: {e}; expected a complete PNG, JPEG, BMP or TIFF file") from e
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(f"image {path} refused: {w}x{h} is {w * h / 1e6:.0f} Mpx, more than the "
                                f"{MAX_PIXELS / 1e6:.0f} Mpx hinas decodes (0.8 GiB as float32 RGB); split or downscale it first")
            yield im


def _rawmode(args: object) -> object:
    return args[0] if isinstance(args, tuple) and args else args


def _wide_array(path: Path) -> np.ndarray:
    """A 16-bit colour file at full depth: Pillow decodes it twice, unpacking the high bytes, then the low ones."""
    planes = []
    for low in (False, True):
        with _open(path) as im:
            if low:
                im.tile = [t._replace(args=_with_rawmode(t.args, _WIDE_COLOUR[_rawmode(t.args)])) for t in im.tile]
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            planes.append(np.asarray(im.convert("RGB"), dtype=np.float32))
    return ((planes[0] * 256 + planes[1]) / 65535).transpose(2, 0, 1).copy()


def _with_rawmode(args: object, rawmode: str) -> object:
    return (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode


def _to_array(im: Image.Image, path: Path, channels: int | None) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT:
        return (np.asarray(im, dtype=np.float32) / 65535)[None]
    if im.mode == "F":
        raise DataError(f"{path}: floating-point images (Pillow mode 'F') are not supported; save as 8- or 16-bit")
    gray = im.mode in _GRAY
    im = im.convert("L" if gray else "RGB")
    if channels == 1 and not gray:
        im = im.convert("L")
    arr = np.asarray(im, dtype=np.float32) / 255
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the upright image, from the file header, without decoding the pixels."""
    with _open(Path(path)) as im:
        w, h = im.size
        try:
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the axes
        except _READ_ERRORS as e:
            raise DataError(f"cannot read image {path}: broken EXIF data ({e})") from e
    return (w, h) if turned else (h, w)


@dataclass(frozen=True)
class ImageSet(Sequence[tuple[str, torch.Tensor]]):
    """A named, ordered list of image files, decoded on access so large sets never sit in memory.

    ``set[i]`` is ``(name, image)``; names are paths relative to the set's folder, without suffix.
    """

    name: str
    paths: tuple[Path, ...]
    names: tuple[str, ...]
    channels: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        return self.names[i], load_image(self.paths[i], self.channels)

    def __add__(self, other: ImageSet) -> ImageSet:
        if self.channels != other.channels:
            raise ConfigError(f"cannot join {self.name} ({self.channels} channels) and {other.name} ({other.channels})")
        return ImageSet(f"{self.name}+{other.name}", self.paths + other.paths, self.names + other.names, self.channels)

    def subset(self, indices: Sequence[int], name: str) -> ImageSet:
        """The images at ``indices``, in that order."""
        paths, names = tuple(self.paths[i] for i in indices), tuple(self.names[i] for i in indices)
        return ImageSet(name, paths, names, self.channels)


def folder_images(root: str | Path, channels: int | None = None, name: str | None = None) -> ImageSet:
    """Every PNG/JPEG/BMP/TIFF under ``root``, recursively, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    named = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    for p in named:
        if not (p.is_file() or p.is_dir()):  # folders named like images are searched like any other
            log.warning("%s: skipped: not a regular file (a FIFO, a device, or a broken or looping symbolic link)", p)
    files = sorted((p for p in named if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no images under {root}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    names = tuple(p.relative_to(root).with_suffix("").as_posix() for p in files)
    return ImageSet(name or root.name, tuple(files), names, channels)


EMBEDDED = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
"""Natural photos inside the scikit-image wheel (no download); drawings, masks, the motion-blurred
clock and the right stereo view (a near copy of the left) are left out."""

EMBEDDED_VAL = ("camera", "chelsea", "gravel", "rocket")
"""Held out of the embedded training split: two gray, two colour, smooth and textured."""


def embedded_images(channels: int | None = None) -> ImageSet:
    """The scikit-image photos as an ImageSet, so hinas trains and tests with no data download."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    names = tuple(sorted(EMBEDDED))
    return ImageSet("embedded", tuple(folder / EMBEDDED[n] for n in names), names, channels)


def embedded_split(channels: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, val): a fixed, disjoint split of the embedded photos."""
    images = embedded_images(channels)
    val = [i for i, n in enumerate(images.names) if n in EMBEDDED_VAL]
    train = [i for i in range(len(images)) if i not in val]
    return images.subset(train, "embedded-train"), images.subset(val, "embedded-val")


@dataclass(frozen=True)
class NamedSet:
    folders: tuple[str, ...]
    count: int
    channels: int | None
    """1 gray, 3 colour, None mixed (kept as stored, as the MATLAB evaluation scripts read them)."""


NAMED_SETS = {
    "Set5": NamedSet(("Set5/HR",), 5, 3),
    "Set14": NamedSet(("Set14",), 14, None),
    "B100": NamedSet(("BSD100",), 100, 3),
    "Urban100": NamedSet(("Urban100",), 100, 3),
    "Manga109": NamedSet(("Manga109",), 109, 3),
    "Set12": NamedSet(("Set12",), 12, 1),
    "BSD68": NamedSet(("BSD68",), 68, 1),
    "CBSD68": NamedSet(("CBSD68",), 68, 3),
    "Kodak24": NamedSet(("Kodak24",), 24, 3),
    "McMaster": NamedSet(("McMaster",), 18, 3),
    "BSD500-train": NamedSet(("BSDS500_train_test/train",), 200, 3),
    "BSD500-val": NamedSet(("BSD100",), 100, 3),
    "BSD500-test": NamedSet(("BSDS500_train_test/test",), 200, 3),
    "BSD500-trainval": NamedSet(("BSDS500_train_test/train", "BSD100"), 300, 3),
    "DIV2K-train": NamedSet(("DIV2K/DIV2K_train_HR",), 800, 3),
    "DIV2K-valid": NamedSet(("DIV2K/DIV2K_valid_HR",), 100, 3),
    "T91": NamedSet(("T91",), 91, 3),
    "Train400": NamedSet(("Train400",), 400, 1),
}
"""Benchmark sets by their usual names: folders under the data root, image count, channels.
B100 is the BSDS500 validation split, hence the shared folder; BSD500-trainval is the
paper's 300 denoising training images."""


DATA_ROOT_ENV = "HINAS_DATA_ROOT"


def data_root() -> Path | None:
    """The ``HINAS_DATA_ROOT`` folder, or None when it is unset."""
    root = os.environ.get(DATA_ROOT_ENV)
    return Path(root) if root else None


def named_set(name: str, data_root: str | Path | None = None, channels: int | None = None) -> ImageSet:
    """A benchmark set from ``data_root`` (default ``HINAS_DATA_ROOT``), checked for its full image count.

    ``channels`` None uses the set's own (see ``NAMED_SETS``); 1 reads a colour set as gray.
    """
    if name not in NAMED_SETS:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(NAMED_SETS)}")
    spec = NAMED_SETS[name]
    root = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV)
    where = " and ".join(f"{f}/" for f in spec.folders)
    hint = (f"pass data_root= a folder that holds {where} (HINAS_DATA_ROOT is read only when data_root is unset)"
            if data_root is not None else f"set HINAS_DATA_ROOT or pass data_root= to a folder that holds {where}")
    if not root:
        raise DataError(f"data set {name!r} needs a data root: {hint}")
    parts = []
    for folder in (Path(root) / f for f in spec.folders):
        if not folder.is_dir():
            raise DataError(f"data set {name!r} not found: looked in {folder}; {hint}")
        parts.append(folder_images(folder, channels if channels is not None else spec.channels, name))
    images = ImageSet(name, sum((p.paths for p in parts), ()), sum((p.names for p in parts), ()), parts[0].channels)
    if len(images) != spec.count:
        unreadable = [str(p) for p in images.paths if not _readable(p)]
        extra = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
        found_in = ", ".join(str(Path(root) / f) for f in spec.folders)
        raise DataError(f"data set {name!r} in {found_in}: found {len(images)} images, expected {spec.count}{extra}")
    return images


def load_images(source: str, data_root: str | Path | None = None, channels: int | None = None) -> ImageSet:
    """Images named the way configs name them: ``embedded``, ``embedded-train``, ``embedded-val``,
    a set in ``NAMED_SETS``, or a folder."""
    if source in ("embedded", "embedded-train", "embedded-val"):
        images = embedded_images(channels)
        return images if source == "embedded" else embedded_split(channels)[source == "embedded-val"]
    if source in NAMED_SETS:
        return named_set(source, data_root, channels)
    if Path(source).is_dir():
        return folder_images(source, channels)
    raise DataError(
        f"unknown data {source!r}: expected embedded, embedded-train, embedded-val, a folder of images, "
        f"or one of {', '.join(NAMED_SETS)}"
    )


def split_images(images: ImageSet, val_images: int, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(weight, arch, val): ``val_images`` held out, the rest halved, after a shuffle fixed by ``seed``.

    The two training halves feed the alternating weight and architecture steps of the search.
    """
    if not 0 < val_images <= len(images) - 2:
        raise ConfigError(f"val_images={val_images} must leave at least 2 of the {len(images)} images in {images.name}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    rest = order[val_images:]
    half = len(rest) // 2
    parts = {"weight": rest[:half], "arch": rest[half:], "val": order[:val_images]}
    weight, arch, val = (images.subset(sorted(idx), f"{images.name}-{tag}") for tag, idx in parts.items())
    return weight, arch, val


def in_memory(images: Sequence[tuple[str, torch.Tensor]], crop: int = 0) -> InMemory:
    """Decode every image once (training draws many patches per image); ``crop`` > 0 keeps a centred square of that side.

    Images are decoded one at a time and kept as uint8 when that is lossless, so a
    large set costs a quarter of its float32 size (DIV2K train: about 7 GB, not 27).
    """
    slabs, out = _Slabs(), []
    for name, img in images:
        if crop:
            h, w = img.shape[-2:]
            top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            img = img[..., top : top + crop, left : left + crop]
        out.append((name, _compact(img, slabs)))
    return InMemory(out)


class InMemory(Sequence[tuple[str, torch.Tensor]]):
    """Decoded images stored compactly; ``set[i]`` is ``(name, float32 image)``, the same values as decoded.

    ``PatchDataset`` reads ``stored`` directly and converts only the patch it cuts.
    """

    def __init__(self, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.names = tuple(name for name, _ in items)
        self.stored = [img for _, img in items]

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        return self.names[i], _as_float(self.stored[i])


def _compact(img: torch.Tensor, slabs: _Slabs) -> torch.Tensor:
    """``img`` as uint8 when it is uint8 or every value is exactly k/255 in float32 (8-bit files); else as it is,
    contiguous (16-bit files). Float images are checked and converted in blocks of rows of about 1 MB, so
    the temporaries stay small and in cache (twice as fast as whole-image passes, and no extra peak)."""
    if img.dtype == torch.uint8:
        return slabs.empty(img.shape).copy_(img)
    h = img.shape[-2]
    per_row = max(1, img.numel() // max(h, 1))
    step = max(1, (1 << 18) // per_row)
    blocks = [(top, img[..., top : top + step, :]) for top in range(0, h, step)]
    if img.dtype != torch.float32 or not all(torch.equal(b.mul(255).round_().clamp_(0, 255).div_(255), b) for _, b in blocks):
        return img.contiguous()
    out = slabs.empty(img.shape)
    for top, b in blocks:
        out[..., top : top + step, :].copy_(b.mul(255).round_())
    return out


class _Slabs:
    """uint8 tensors cut from anonymous memory maps of at least 256 MiB, outside the malloc heap.

    Why: decoding frees a few float32 copies of every image; in glibc's heap the kept uint8
    images land in those holes and split them, so a set of 3 MB images peaked at three times its
    uint8 size. Pages of a map that are never written cost no memory.
    """

    SIZE, ALIGN = 256 << 20, 64

    def __init__(self) -> None:
        self.slab, self.used = torch.empty(0, dtype=torch.uint8), 0

    def empty(self, shape: torch.Size) -> torch.Tensor:
        n = shape.numel()
        if self.used + n > self.slab.numel():
            size = max(n, self.SIZE)
            self.slab, self.used = torch.frombuffer(mmap.mmap(-1, size), dtype=torch.uint8, count=size), 0
        out = self.slab[self.used : self.used + n].view(shape)
        self.used += -(-n // self.ALIGN) * self.ALIGN
        return out


def _as_float(img: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1]: uint8 / 255 gives the very floats that decoding 8-bit files does."""
    return img.float().div_(255) if img.dtype == torch.uint8 else img


def save_image(img: torch.Tensor, path: str | Path, bits: int = 8) -> None:
    """Write a (C, H, W) image in [0, 1] as an 8- or 16-bit PNG (clamped and rounded), creating folders.

    Written atomically (temporary file, then rename): a failed write never leaves a partial image under ``path``.
    """
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, got {bits!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {path.parent}: {err.strerror or err}") from err
    x = quantize(img.detach().float().cpu()) if bits == 8 else img.detach().float().cpu().clamp(0, 1)
    arr = (x * (2**bits - 1)).round().numpy().astype(np.uint8 if bits == 8 else np.uint16)
    if bits == 16:
        atomic_write_bytes(path, _png16(arr))
        return
    buffer = io.BytesIO()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getbuffer())


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit gray or RGB PNG of a (C, H, W) uint16 array (Pillow writes 16-bit gray only)."""
    c, h, w = arr.shape
    rows = np.ascontiguousarray(arr.transpose(1, 2, 0), dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if c == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
    except _READ_ERRORS:
        return False
    return True


class PatchDataset(Dataset):
    """Random (degraded, clean) patches: noisy/clean for ``denoise``, LR/HR (LR ``patch`` wide) for ``sr``.

    Item ``i`` comes from image ``i % len(images)``, with a generator seeded by a
    hash of ``(seed, epoch, i)``: call ``set_epoch`` for fresh patches each epoch, or
    make ``length`` cover the whole run. ``sigma`` is a number or a tuple drawn from per
    patch. ``rescale`` (lo, hi) crops a random ``patch / f`` square, ``f`` in [lo, hi],
    and resizes it to ``patch``: the paper retrains denoisers with (0.8, 1.2). SR
    patches are cut from the HR image with a margin, downscaled and trimmed, so they
    equal the matching crop of the whole image's MATLAB downscale (uint8-rounded),
    as test LR images are made.
    """

    def __init__(
        self,
        images: Sequence[tuple[str, torch.Tensor]],
        patch: int,
        *,
        task: str,
        scale: int = 1,
        sigma: float | tuple[float, ...] = 25,
        augment: bool = True,
        rescale: tuple[float, float] | None = None,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        if task not in ("denoise", "sr"):
            raise ConfigError(f"task must be 'denoise' or 'sr', got {task!r}")
        if (task == "sr" and scale < 2) or (task == "denoise" and scale != 1):
            raise ConfigError(f"scale {scale} does not fit task {task!r}: SR needs >= 2, denoising 1")
        self.sigmas = tuple(sigma) if isinstance(sigma, (tuple, list)) else (sigma,)
        if not self.sigmas or min(self.sigmas) < 0:
            raise ConfigError(f"sigma must be a number >= 0 or a tuple of them, got {sigma!r}")
        if task == "sr" and rescale is not None:
            raise ConfigError("rescale is for denoising only; rescaling the HR image would change the SR degradation")
        self.rescale = rescale
        if len(images) == 0:
            raise DataError("PatchDataset got no images")
        self.images, self.patch, self.task, self.scale = images, patch, task, scale
        self.augment, self.length, self.seed, self.epoch = augment, length or len(images), seed, 0
        need = patch * scale
        for source, h, w in _sizes(images):
            if min(h, w) < need:
                what = f"the {patch}x{patch} patch" + (f" at x{scale} ({need}x{need} HR)" if task == "sr" else "")
                raise DataError(f"image {source} is {h}x{w}, smaller than {what}")

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of ``epoch``; non-persistent DataLoader workers pick it up at the next iteration."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, index))
        img = _pixels(self.images, index % len(self.images))
        if self.task == "sr":
            degraded, clean = self._sr_patch(img, g)
        else:
            clean = self._clean_patch(img, g)
            sigma = self.sigmas[_randint(g, len(self.sigmas))]
            degraded = add_noise(clean, sigma, generator=g)
        if self.augment:
            k, flip = _randint(g, 4), _randint(g, 2)
            degraded, clean = (_orient(x, k, flip) for x in (degraded, clean))
        return degraded, clean

    def _clean_patch(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = img.shape[-2:]
        size = self.patch
        if self.rescale is not None:
            lo, hi = self.rescale
            factor = lo + (hi - lo) * torch.rand((), generator=g).item()
            size = min(round(self.patch / factor), h, w)
        top, left = _randint(g, h - size + 1), _randint(g, w - size + 1)
        crop = _as_float(img[..., top : top + size, left : left + size])
        if size != self.patch:
            crop = imresize(crop, size=(self.patch, self.patch)).clamp(0, 1)
        return crop.contiguous()

    def _sr_patch(self, img: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.scale, self.patch
        lr_h, lr_w = img.shape[-2] // s, img.shape[-1] // s
        top, left = _randint(g, lr_h - p + 1), _randint(g, lr_w - p + 1)
        margin = 3  # LR pixels; the antialiased kernel reaches 2 LR pixels (4*scale HR taps) either side
        t0, l0 = max(top - margin, 0), max(left - margin, 0)
        t1, l1 = min(top + p + margin, lr_h), min(left + p + margin, lr_w)
        region = _as_float(img[..., t0 * s : t1 * s, l0 * s : l1 * s])
        lr = quantize(bicubic_down(region, s))[..., top - t0 : top - t0 + p, left - l0 : left - l0 + p]
        hr = _as_float(img[..., top * s : (top + p) * s, left * s : (left + p) * s])
        return lr.contiguous(), hr.contiguous()


def _sizes(images: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, int, int]]:
    """(file or name, H, W) of every image, from file headers when the images are on disk."""
    if isinstance(images, ImageSet):
        return [(str(p), *image_size(p)) for p in images.paths]
    if isinstance(images, InMemory):
        return [(name, *img.shape[-2:]) for name, img in zip(images.names, images.stored)]
    return [(name, *img.shape[-2:]) for name, img in images]


def _pixels(images: Sequence[tuple[str, torch.Tensor]], i: int) -> torch.Tensor:
    """Image ``i`` as stored (uint8 for :class:`InMemory`), so a patch is cut before it is converted."""
    return images.stored[i] if isinstance(images, InMemory) else images[i][1]


def _randint(g: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=g))


def _orient(x: torch.Tensor, k: int, flip: int) -> torch.Tensor:
    """One of the 8 dihedral orientations: ``k`` quarter turns, then an optional horizontal flip."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x

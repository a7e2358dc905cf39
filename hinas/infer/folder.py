"""Restore a folder of degraded images (noisy photos, or low-resolution ones for SR) with a trained network."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from tqdm import tqdm  # plain text: it shows in terminals, notebooks and exported notebooks alike

from hinas.data.images import decode, folder_images, save_image
from hinas.errors import ConfigError, DataError, ModelError, OutputError
from hinas.files import lock_folder
from hinas.hardware import pick_device
from hinas.infer.backends import BACKENDS, InferenceModel
from hinas.infer.tiling import check_tiling, tiled_forward
from hinas.nas.network import Network, load_model

log = logging.getLogger(__name__)


def restore_folder(model: str | Path, inputs: str | Path, outputs: str | Path, *, tile: int = 0, overlap: int = 16,
                   device: str = "auto", backend: str = "torch", overwrite: bool = False, progress: bool = False) -> list[Path]:
    """Write ``outputs/<name>.png`` for every image under ``inputs``; returns the written paths.

    ``model`` is a retrain run directory (holding ``best.pt``) or a checkpoint.
    Images are restored whole (in tiles when their estimated memory calls for it,
    see :func:`~hinas.infer.tiling.tiled_forward`), or in overlapping tiles of side
    ``tile``; ``backend`` is as for evaluation (the fast inference form by default).
    Outputs are PNGs of the input's bit depth: 16-bit where the input had 16 bits
    (gray or colour), 8-bit otherwise; what decoding leaves out (later frames,
    alpha) is logged. Everything is checked before the first image is written:
    the folders (the output never is, lies inside or would write into the input
    folder, even with ``overwrite``), the model, and every input, decoded. Each
    image is written atomically, and the output folder is locked while restoring,
    so a second restore into it is refused.
    """
    if backend not in (*BACKENDS, "training"):
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join((*BACKENDS, 'training'))}")
    check_tiling(tile, overlap)
    inputs, outputs = Path(inputs), Path(outputs)
    _check_length(outputs)
    if not inputs.is_dir():
        raise DataError(f"input folder {inputs} does not exist or is not a folder")
    if outputs.exists() and not outputs.is_dir():
        raise ConfigError(f"output {outputs} is a file, not a folder; name a folder for the restored images")
    if outputs.is_dir():
        os.close(lock_folder(outputs))  # refuses a folder another restore is writing now, before any work
    if _resolve(outputs) == _resolve(inputs) or _resolve(inputs) in _resolve(outputs).parents:
        raise ConfigError(f"output folder {outputs} lies inside the input folder {inputs}; choose a folder outside it")
    checkpoint = Path(model) / "best.pt" if Path(model).is_dir() else Path(model)
    if not (checkpoint.exists() or checkpoint.is_symlink()):
        raise ConfigError(f"{checkpoint}: no such checkpoint; give a retrain run directory (holding best.pt) or a .pt file")
    images = folder_images(inputs)
    targets = [outputs / f"{name}.png" for name in images.names]
    _check_targets(inputs, images.paths, images.names, targets, overwrite)
    dev = pick_device(device)
    net = load_model(checkpoint).to(dev).eval()
    kind = {1: "gray", 3: "RGB"}
    bits = []
    for path in images.paths:  # decoded once before anything is written: a broken image stops nothing half-way
        decoded = decode(path)
        if decoded.image.shape[0] != net.in_channels:
            raise DataError(f"{path}: a {kind[decoded.image.shape[0]]} image, but the network restores "
                            f"{kind[net.in_channels]} images; convert the inputs first")
        for note in decoded.notes:
            log.warning("%s: %s", path, note)
        bits.append(decoded.bits)
    runner = InferenceModel(net, backend) if backend != "training" and isinstance(net, Network) else net
    lock = _open_output(outputs)
    try:
        for path, target, depth in tqdm(zip(images.paths, targets, bits), total=len(targets), desc="restore",
                                        disable=not progress):
            image = decode(path).image
            try:
                restored = tiled_forward(runner, image.unsqueeze(0).to(dev), net.scale, tile, overlap)[0]
            except ModelError as err:
                raise ModelError(f"{path}: {err}; nothing was written for it") from None
            save_image(restored.float().cpu(), target, depth)
    finally:
        os.close(lock)
    return targets


def _check_targets(inputs: Path, paths: tuple[Path, ...], names: tuple[str, ...], targets: list[Path], overwrite: bool) -> None:
    """Refuse output paths that clash, would overwrite an input or write into the input folder, exist (without
    ``overwrite``), are folders, or are too long for the file system."""
    uses = Counter(targets)
    clash = next((n for n, t in zip(names, targets) if uses[t] > 1), None)
    if clash is not None:
        raise DataError(f"{inputs}: several images are named {clash!r} (different suffixes); they would be written to one file")
    source, originals = _resolve(inputs), {_resolve(p) for p in paths}
    for target in targets:
        _check_length(target)
        where = _resolve(target)
        if where in originals or source in where.parents:
            raise ConfigError(f"{target} would be written into the input folder {inputs} (an input is never overwritten); "
                              "choose an output folder that does not contain it")
        if target.is_dir():
            raise ConfigError(f"{target} is a folder; it cannot be replaced by a restored image")
        blocked = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"{blocked} is a file where {target} needs a folder; move it away")
    written = [t for t in targets if t.exists()]
    if written and not overwrite:
        raise ConfigError(f"{written[0].parent} already holds {len(written)} of the restored images (e.g. {written[0].name}); "
                          "pass --overwrite to replace them")


def _check_length(target: Path) -> None:
    """Refuse a path the file system would: a part longer than NAME_MAX, or the whole (with the temporary file's 5 extra
    bytes) as long as PATH_MAX."""
    existing = next(p for p in target.absolute().parents if _exists(p))
    name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    too_long = [part for part in target.parts if len(os.fsencode(part)) > name_max]
    if too_long or len(os.fsencode(target)) + len("..tmp") >= path_max:
        what = f"a name is longer than {name_max} bytes" if too_long else f"the path is {path_max} bytes or longer"
        raise DataError(f"cannot write {str(target)[:60]}...: {what}; shorten the file or folder names")


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symbolic link loop
        raise ConfigError(f"{path}: cannot follow this path ({err}); a symbolic link loop?") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up
        return False


def _open_output(outputs: Path) -> int:
    """Create ``outputs``, prove it writable and lock it (see :func:`~hinas.files.lock_folder`); the lock's descriptor."""
    try:
        outputs.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {outputs}: {err.strerror or err}; choose a writable folder") from None
    lock = lock_folder(outputs)
    try:
        with tempfile.TemporaryFile(dir=outputs):
            pass
    except OSError as err:
        os.close(lock)
        raise OutputError(f"cannot write into the output folder {outputs}: {err.strerror or err}; "
                          "choose a writable folder") from None
    return lock

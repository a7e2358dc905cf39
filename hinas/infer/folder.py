"""Restore a folder of degraded images (noisy photos, or low-resolution ones for SR) with a trained network."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm  # plain text: it shows in terminals, notebooks and exported notebooks alike

from hinas.data.images import folder_images, image_channels, save_image
from hinas.errors import ConfigError, DataError
from hinas.hardware import pick_device
from hinas.infer.backends import BACKENDS, InferenceModel
from hinas.infer.tiling import tiled_forward
from hinas.nas.network import Network, load_model


def restore_folder(model: str | Path, inputs: str | Path, outputs: str | Path, *, tile: int = 0, overlap: int = 16,
                   device: str = "auto", backend: str = "torch", overwrite: bool = False, progress: bool = False) -> list[Path]:
    """Write ``outputs/<name>.png`` for every image under ``inputs``; returns the written paths.

    ``model`` is a retrain run directory (holding ``best.pt``) or a checkpoint.
    Images are restored whole, or in overlapping tiles of side ``tile`` to bound
    memory; ``backend`` is as for evaluation (the fast inference form by default).
    Everything is checked before the first image is written.
    """
    if backend not in (*BACKENDS, "training"):
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join((*BACKENDS, 'training'))}")
    if tile < 0 or overlap < 0 or (tile and overlap >= tile):
        raise ConfigError(f"tile ({tile}) and overlap ({overlap}) must not be negative, and overlap must be smaller than tile")
    inputs, outputs = Path(inputs), Path(outputs)
    if not inputs.is_dir():
        raise DataError(f"input folder {inputs} does not exist or is not a folder")
    if outputs.resolve() == inputs.resolve() or inputs.resolve() in outputs.resolve().parents:
        raise ConfigError(f"output folder {outputs} lies inside the input folder {inputs}; choose a folder outside it")
    checkpoint = Path(model) / "best.pt" if Path(model).is_dir() else Path(model)
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint; give a retrain run directory (holding best.pt) or a .pt file")
    images = folder_images(inputs)
    targets = [outputs / f"{name}.png" for name in images.names]
    clash = next((n for n, t in zip(images.names, targets) if targets.count(t) > 1), None)
    if clash is not None:
        raise DataError(f"{inputs}: several images are named {clash!r} (different suffixes); they would be written to one file")
    written = [t for t in targets if t.exists()]
    if written and not overwrite:
        raise ConfigError(f"{outputs} already holds {len(written)} of the restored images (e.g. {written[0].name}); "
                          "pass --overwrite to replace them")
    dev = pick_device(device)
    net = load_model(checkpoint).to(dev).eval()
    space = net.space
    kind = {1: "gray", 3: "RGB"}
    for path in images.paths:
        if image_channels(path) != space.in_channels:
            raise DataError(f"{path}: a {kind[image_channels(path)]} image, but the network restores "
                            f"{kind[space.in_channels]} images; convert the inputs first")
    runner = InferenceModel(net, backend) if backend != "training" and isinstance(net, Network) else net
    for (_, image), target in tqdm(zip(images, targets), total=len(targets), desc="restore", disable=not progress):
        restored = tiled_forward(runner, image.unsqueeze(0).to(dev), space.scale, tile, overlap)[0]
        save_image(restored.float().cpu(), target)
    return targets

"""Run settings for search, retraining and evaluation: the single place where every default lives.

The CLI (``--preset``, ``--config``, ``--set key=value``), the notebooks'
parameters and ``params.yaml`` all resolve through :func:`resolve`, so the
paper's protocol is written down once, here, in the ``paper-*`` presets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from hinas import config
from hinas.errors import ConfigError
from hinas.files import read_regular
from hinas.infer.tiling import check_tiling
from hinas.nas.space import PRESETS as SPACE_PRESETS
from hinas.nas.space import SR_SCALES, SearchSpace

Device = str
"""``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
Amp = Literal["auto", "off", "bf16", "fp16"]


@dataclass(frozen=True)
class RunConfig:
    """The settings every training run shares (search and retraining): data, schedule basics, precision, faults."""

    data: str = "embedded-train"
    """``embedded-train`` (scikit-image photos, ``embedded-val`` left out), a named set (e.g. ``BSD500-trainval``) or a folder."""
    data_root: str = ""
    """Where named sets live; empty means the ``HINAS_DATA_ROOT`` environment variable."""
    val_crop: int = 0
    """Validate on a centre crop of this side (0: whole images)."""
    patch: int = 64
    """Training patch side; for SR the low-resolution side."""
    lr_power: float = 0.9
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """The weights' optimiser: ``sgd`` with ``momentum`` (the paper's), ``adam`` or ``adamw`` (the search's architecture
    parameters always use Adam, as the paper's)."""
    momentum: float = 0.9
    grad_clip: float = 0.0
    """Clip the norm of the weights' gradient to this (0: no clipping, as the paper's search; its retraining uses 5)."""
    pixel_loss: Literal["mse", "l1"] = "mse"
    seed: int = 0
    device: Device = "auto"
    threads: int = 0
    """CPU threads (0: the cores idle at the start, at most torch's default; see ``hinas.hardware.auto_threads``)."""
    amp: Amp = "auto"
    """``auto``: bf16 where it is measured faster (CUDA; retraining on CPUs with AMX or AVX-512 bf16), else float32.
    The resolved precision is recorded in the run's metrics and checkpoints."""
    compile: bool = False
    """Run the training steps' forward and backward through ``torch.compile`` (inductor): fewer, fused kernels. It needs a
    C++ compiler, and the first steps compile, for a minute or more on 2 CPU cores (again after a resume); checkpoints,
    evaluation and latency use the module as written, so runs with and without it read each other's weights. Off by
    default: in benchmarks/train_step.py (1 thread, bf16, whole step compiled) the retraining step at batch 24 ran
    0.98-1.21x as fast as the best eager form (CPU time) after 83-336 s of compiling, and the search supernet's step
    was still compiling after 22 min. Recorded as ``compiled`` in the run's metrics."""
    deterministic: bool = False
    """CUDA: deterministic kernels and no cuDNN autotuning, so that a resumed run repeats bit for bit (slower).
    CPU runs are deterministic anyway."""
    workers: int = 0
    tensorboard: bool = False
    """Also write the logged scalars for TensorBoard (needs the tensorboard package)."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps (0: only at epoch ends when searching, at validations when retraining).
    SIGINT and SIGTERM checkpoint before stopping; ``--resume RUN_DIR`` continues bit for bit on the CPU, and on CUDA
    with ``deterministic``."""
    step_retries: int = 1
    """A step whose loss or gradient is NaN or infinite is computed again on the same batch this many times before
    it counts as a fault (each logged as ``retried``): oneDNN's bf16 kernels (torch 2.13) on a CPU rarely return a
    gradient of 1e30 that the same step does not repeat (in SR x2 retraining, once in several hundred steps)."""
    on_nonfinite: Literal["rollback", "stop"] = "rollback"
    """A NaN or infinite loss or gradient is never applied; if it persists through ``step_retries``, ``rollback``
    returns to the last checkpoint with every learning rate times ``rollback_lr_factor``, or ``stop`` ends the run
    with a report."""
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    """A fault after this many rollbacks stops the run."""

    def __post_init__(self) -> None:
        _positive(self, "patch")
        _non_negative(self, "val_crop", "workers", "checkpoint_every", "max_rollbacks", "threads", "grad_clip",
                       "step_retries")
        _fraction(self, "rollback_lr_factor")


@dataclass(frozen=True)
class SearchConfig(RunConfig):
    space: SearchSpace = field(default_factory=SearchSpace)
    val_images: int = 6
    """Images held out for validation; the rest split evenly into the weight and the architecture halves."""
    split_seed: int = -1
    """Seed of that split; -1 takes ``seed``. Fixed across seeds, every search is validated on the same images, so
    their supernets' margins over the noisy input compare: the margin depends on the images as much as on training
    (on seed 2's six 96x96 validation crops of BSDS500 a retrained denoiser gains 7.2 dB at sigma 25, on seed 0's
    9.8 dB)."""
    patches_per_image: int = 1
    batch: int = 6
    sigmas: tuple[float, ...] = (30.0, 50.0, 70.0)
    """Denoising: noise levels (0-255 scale), one drawn per training patch."""
    val_sigma: float = 50.0
    epochs: int = 100
    arch_start: int = 21
    """First (1-based) epoch in which alphas and betas are updated; earlier epochs train weights only."""
    select_from: int = 61
    """First epoch whose validation score may select the genotype (early stopping against collapse)."""
    lr: float = 0.025
    lr_min: float = 1e-3
    lr_cycle: int = 10
    weight_decay: float = 3e-4
    arch_lr: float = 1e-3
    arch_weight_decay: float = 1e-3
    ssim_weight: float = 0.5
    loss_scale: float = 0.5
    supernet: Literal["fused", "reference"] = "fused"
    """Supernet cell implementation: ``fused`` (fast, lean) or ``reference`` (plain, for checking); same mathematics."""
    checkpoint_cells: bool = False
    """Recompute each supernet cell in the backward pass instead of keeping its activations: less memory, more time."""
    collapse_skip_limit: int = 0
    """Stop the search once an epoch's genotype (from ``arch_start`` on) has this many skip (identity) ops,
    and select among the earlier epochs: DARTS-style collapse. 0: never stop."""
    latency_weight: float = 0.0
    """Architecture loss + this x log(expected latency in ms) of the derived network (:mod:`hinas.nas.latency`);
    with ``latency_target_ms``, this (or 1) x max(0, expected / target - 1) instead. 0 and no target: off."""
    latency_target_ms: float = 0.0
    """Penalise only an expected latency above this many milliseconds (0: no target)."""
    latency_table: str = ""
    """Latency table JSON (``hinas profile``): used when it holds on this machine, refused when measured elsewhere,
    measured and written there when missing. Empty: measured into the run directory when the latency term is on."""
    latency_filters: int = 20
    """The filter multiplier the derived network is retrained and run at (``train.filters``), which latency is for."""
    latency_size: int = 256
    """Input side (pixels) latency is measured at."""
    latency_precision: Literal["float32", "bf16"] = "float32"
    """What the deployed inference form computes in (bf16 only where the device has it natively), which latency is for."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "val_images", "patches_per_image", "batch", "epochs", "arch_start", "select_from", "lr_cycle",
                  "latency_filters", "latency_size")
        _non_negative(self, "lr", "lr_min", "arch_lr", "weight_decay", "arch_weight_decay", "val_sigma", "collapse_skip_limit",
                      "latency_weight", "latency_target_ms")
        if self.split_seed < -1:
            raise ConfigError(f"search.split_seed: -1 (the run's seed) or a seed of 0 or more, got {self.split_seed}")
        if any(s < 0 for s in self.sigmas) or not self.sigmas:
            raise ConfigError(f"search.sigmas: noise levels must be non-negative and at least one, got {list(self.sigmas)}")


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    model: Literal["hinas", "dncnn"] = "hinas"
    """``hinas``: the network derived from ``genotype``; ``dncnn``: the DnCNN-17 baseline (gray, 64 channels; ``genotype``
    and ``filters`` unused), trained by the same loop so that it gets the same budget."""
    genotype: str = ""
    """A genotype.json, or a search run directory holding one."""
    filters: int = 20
    scale: int = 0
    """SR scale of the retrained net; 0 keeps the genotype's."""
    sigma: float = 50.0
    """Denoising: the one noise level this net is trained for."""
    val_data: str = ""
    """Validation images; empty holds out ``val_images`` of ``data``."""
    val_images: int = 2
    batch: int = 24
    rescale: tuple[float, ...] = (0.8, 1.2)
    """Random rescale range for denoising patches; empty turns it off."""
    iterations: int = 600_000
    minutes: float = 0.0
    """Train for about this many minutes of training steps instead of ``iterations`` (which stays the ceiling; 0:
    exactly ``iterations``). On a CPU the minutes are the process's CPU time (all its threads: 4 minutes at 2 threads
    take about 2 of wall time), elsewhere wall time. The step time is measured over 20 steps early in the run and
    fixes the number of iterations, which the checkpoint keeps, so a resumed run continues the same schedule.
    Validations come on top. This is how networks of different speed get the same CPU-time budget."""
    val_every: int = 1000
    lr: float = 0.05
    schedule: Literal["poly", "cosine", "onecycle"] = "poly"
    """Learning rate over the run (:func:`hinas.engine.losses.retrain_lr`): the paper's ``poly`` (power ``lr_power``),
    ``cosine``, or ``onecycle`` (warm-up over 30%, then cosine)."""
    weight_decay: float = 4e-5
    grad_clip: float = 5.0
    ssim_weight: float = 0.6

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "filters", "batch", "iterations", "val_every", "val_images")
        _non_negative(self, "sigma", "lr", "weight_decay", "scale", "minutes")
        if self.scale not in (0, *SR_SCALES):
            raise ConfigError(f"train.scale: {self.scale} is not valid; 0 keeps the genotype's, or choose one of {SR_SCALES}")
        if self.rescale and (len(self.rescale) != 2 or not 0 < self.rescale[0] <= self.rescale[1]):
            raise ConfigError(f"train.rescale: expected [low, high] with 0 < low <= high, or [], got {list(self.rescale)}")


@dataclass(frozen=True)
class EvalConfig:
    model: str = "noisy"
    """A retrain run directory or checkpoint, or a baseline: ``noisy`` (denoising) or ``bicubic`` (SR)."""
    task: Literal["denoise", "sr", ""] = ""
    """Needed only for baselines; a trained model knows its task."""
    sets: tuple[str, ...] = ("embedded-val",)
    """Named sets (``Set12``, ``BSD68``, ``Set5`` ...), ``embedded-val``, or folders."""
    data_root: str = ""
    sigmas: tuple[float, ...] = (25.0,)
    scales: tuple[int, ...] = (2, 3, 4)
    save_images: bool = False
    tile: int = 0
    """Restore in tiles of this side (0: whole image at once) to bound memory."""
    tile_overlap: int = 16
    device: Device = "auto"
    threads: int = 0
    """CPU threads (0: the cores idle at the start, at most torch's default; see ``hinas.hardware.auto_threads``)."""
    backend: Literal["torch", "compile", "onnxruntime", "training"] = "torch"
    """How a trained network runs: its inference form (:mod:`hinas.infer.backends`) in eager PyTorch, through
    ``torch.compile`` or ONNX Runtime, or ``training``, the network as trained (eval mode)."""

    def __post_init__(self) -> None:
        _non_negative(self, "tile", "tile_overlap", "threads")
        if not self.sets:
            raise ConfigError("eval.sets: name at least one test set or folder")
        if any(s < 0 for s in self.sigmas):
            raise ConfigError(f"eval.sigmas: noise levels must not be negative, got {list(self.sigmas)}")
        if any(s not in SR_SCALES for s in self.scales):
            raise ConfigError(f"eval.scales: {list(self.scales)} is not valid; choose from {SR_SCALES}")
        check_tiling(self.tile, self.tile_overlap, "eval.")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 1:
            raise ConfigError(f"{_section(obj)}.{n}: must be at least 1, got {getattr(obj, n)}")


def _non_negative(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise ConfigError(f"{_section(obj)}.{n}: must not be negative, got {getattr(obj, n)}")


def _fraction(obj: Any, *names: str) -> None:
    for n in names:
        if not 0 < getattr(obj, n) < 1:
            raise ConfigError(f"{_section(obj)}.{n}: must lie strictly between 0 and 1, got {getattr(obj, n)}")


def _section(obj: Any) -> str:
    return SECTIONS[type(obj)]


# --- presets: overrides on top of the dataclass defaults ---------------------------------------------

_SMOKE_SPACE = {"layers": 2, "nodes": 2, "filters": 2}

# About five minutes on 2 CPU cores on the embedded photos: a narrow copy of the paper's space. Adam on the weights:
# with the paper's SGD the supernet of this short search fell below its noisy input and collapsed to skip
# connections; with Adam (lr 2e-3) it ends 6 dB above it with one skip (RESULTS.md, recipe study).
_CPU_DEMO_SEARCH: dict[str, Any] = {
    "space": {**SPACE_PRESETS["paper-denoise"].to_dict(), "nodes": 3, "filters": 6}, "val_images": 2, "patch": 32,
    "patches_per_image": 12, "batch": 8, "epochs": 20, "arch_start": 8, "select_from": 11, "val_crop": 96,
    "lr_cycle": 5, "grad_clip": 5.0, "optimizer": "adam", "lr": 0.002, "lr_min": 1e-5,
}

SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    # The authors' released search configs: BSDS500 train+val (300 images) gray, 147/147/6 split ...
    "paper-denoise": {"space": SPACE_PRESETS["paper-denoise"].to_dict(), "data": "BSD500-trainval"},
    # ... and DIV2K train x4, 380/380/40.
    "paper-sr": {
        "space": SPACE_PRESETS["paper-sr"].to_dict(), "data": "DIV2K-train", "val_images": 40, "batch": 24,
        "pixel_loss": "l1", "ssim_weight": 0.6,
    },
    # Seconds: exercises every code path (warm-up, arch steps, selection) for tests.
    "smoke": {
        "space": {**SPACE_PRESETS["paper-denoise"].to_dict(), **_SMOKE_SPACE}, "val_images": 2, "patch": 16,
        "batch": 2, "epochs": 2, "arch_start": 2, "select_from": 1, "val_crop": 32,
    },
    "cpu-demo": _CPU_DEMO_SEARCH,
    # The search of ``cpu-hour``: cpu-demo's on BSDS500's 200 gray training images at sigma 25, two patches of each
    # per epoch, 6 validation images, at 2 threads (RESULTS.md, "One CPU-hour").
    "cpu-hour": {**_CPU_DEMO_SEARCH, "data": "BSD500-train", "sigmas": [25.0], "val_sigma": 25.0, "val_images": 6,
                 "patches_per_image": 2, "arch_start": 6, "select_from": 10, "threads": 2},
}

# The recipe with the most PSNR per CPU-minute in benchmarks/recipe.py (RESULTS.md, "Training recipe"): Adam with a
# one-cycle schedule and an L1 loss; wider nets and larger patches or batches gave less at equal time.
_CPU_DEMO_TRAIN: dict[str, Any] = {
    "filters": 8, "val_images": 2, "patch": 40, "batch": 8, "iterations": 2000, "val_every": 400, "val_crop": 128,
    "sigma": 25.0, "optimizer": "adam", "lr": 0.002, "schedule": "onecycle", "pixel_loss": "l1", "ssim_weight": 0.0,
}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper-denoise": {"filters": 20, "data": "BSD500-trainval", "val_data": "BSD500-test", "iterations": 600_000, "batch": 24},
    "paper-sr": {"filters": 16, "data": "DIV2K-train", "val_data": "DIV2K-valid", "batch": 16, "rescale": [],
                 "pixel_loss": "l1", "ssim_weight": 0.6},
    "smoke": {"filters": 4, "val_images": 2, "patch": 16, "batch": 2, "iterations": 4, "val_every": 2, "val_crop": 32},
    # At most 15 minutes of CPU time (about 7.5 of wall time at 2 threads): on an AVX-512 bf16 CPU the demo's 2000
    # iterations fit (retrain and evaluation took 6.6 wall-minutes there, README), and a CPU whose steps are slower (float32
    # on AVX2) trains fewer instead of pushing ``hinas demo`` past its 15 minutes.
    "cpu-demo": {**_CPU_DEMO_TRAIN, "minutes": 15.0},
    # The retraining of ``cpu-hour``: cpu-demo's recipe on Train400 (DnCNN's training set) at F=16 for 76 minutes of
    # CPU time at 2 threads (about 38 of wall time), selected on 4 held-out Train400 images (RESULTS.md, "One CPU-hour").
    "cpu-hour": {**_CPU_DEMO_TRAIN, "filters": 16, "data": "Train400", "val_images": 4, "iterations": 1_000_000,
                 "minutes": 76.0, "val_every": 1000, "val_crop": 0, "threads": 2},
}

EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "denoise-gray": {"sets": ["Set12", "BSD68"], "sigmas": [30, 50, 70]},
    "denoise-color": {"sets": ["CBSD68", "Kodak24", "McMaster"], "sigmas": [30, 50, 70]},
    "sr": {"sets": ["Set5", "Set14", "B100", "Urban100", "Manga109"], "scales": [2, 3, 4]},
    "smoke": {"sets": ["embedded-val"], "sigmas": [25]},
    "cpu-hour": {"sets": ["Set12", "BSD68"], "sigmas": [25], "threads": 2},
}

SECTIONS = {SearchConfig: "search", TrainConfig: "train", EvalConfig: "eval", RunConfig: "run"}
PRESETS = {SearchConfig: SEARCH_PRESETS, TrainConfig: TRAIN_PRESETS, EvalConfig: EVAL_PRESETS}

C = TypeVar("C", SearchConfig, TrainConfig, EvalConfig)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


MAX_YAML_VALUES = 100_000
"""Values a settings document may hold once its aliases are expanded; real ones hold a few hundred."""


def load_yaml(text: str, source: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, refusing aliases that expand past ``MAX_YAML_VALUES`` or refer to themselves.

    Anchors and aliases let a few hundred bytes stand for billions of values ("billion
    laughs"); the document is sized on its node graph before anything is built from it.
    Errors quote the first line of the parser's message only.
    """
    try:
        loader = yaml.SafeLoader(text)  # reads ahead: may refuse the text at once
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded(node, {}, set(), source)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source} is YAML nested too deeply to be settings") from None


def _expanded(node: Any, sizes: dict[int, int], open_nodes: set[int], source: str) -> int:
    """Values under ``node`` with every alias expanded, each shared node sized once."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError(f"{source} holds an alias to a node that contains it; settings cannot be recursive")
    open_nodes.add(key)
    children = ([part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1 + sum(_expanded(child, sizes, open_nodes, source) for child in children)
    if total > MAX_YAML_VALUES:
        raise ConfigError(f"{source} expands, through its anchors and aliases, to more than {MAX_YAML_VALUES} values; refused")
    open_nodes.discard(key)
    sizes[key] = total
    return total


MAX_CONFIG_BYTES = 1 << 20
"""A settings file larger than this is refused unread; real ones are a few kilobytes."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value); the value is read as YAML, so ``8``, ``[30, 50]``, ``true`` work."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    shown = item if len(item) <= 80 else item[:77] + "..."  # a hostile value is not echoed whole
    return key.strip().split("."), load_yaml(raw, f"--set {shown}: the value") if raw.strip() else ""


def load_section(file: str | Path) -> dict[str, Any]:
    """Settings from ``FILE`` or ``FILE:SECTION`` (a top-level key, as in ``params.yaml:search_denoise``)."""
    path, sep, section = str(file).rpartition(":") if ":" in str(file) else (str(file), "", "")
    data = read_regular(path, "config file", ConfigError, MAX_CONFIG_BYTES)
    try:
        loaded = load_yaml(data.decode("utf-8"), f"{path}: the config file") or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    if sep:
        if not isinstance(loaded, dict) or not isinstance(loaded.get(section), dict):
            sections = ", ".join(k for k, v in loaded.items() if isinstance(v, dict)) if isinstance(loaded, dict) else ""
            raise ConfigError(f"{path}: no section {section!r}; sections: {sections or 'none'}")
        loaded = loaded[section]
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: expected a mapping of settings")
    return dict(loaded)


def resolve(cls: type[C], preset: str | None = None, file: str | Path | None = None, overrides: list[str] = ()) -> C:
    """Defaults <- preset <- YAML file <- ``key=value`` overrides, validated as a whole before any work starts.

    ``file`` may name a section (``params.yaml:search_denoise``) and may hold a
    ``preset`` key, so DVC's ``params.yaml`` feeds the CLI without restating defaults.
    """
    loaded = load_section(file) if file else {}
    preset = preset or loaded.pop("preset", None)
    loaded.pop("preset", None)
    data: dict[str, Any] = config.to_dict(cls())
    if preset:
        table = PRESETS[cls]
        if preset not in table:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(table)}")
        data = _merge(data, table[preset])
    data = _merge(data, loaded)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for depth, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys[: depth + 1])!r} is not a section; sections: "
                                  f"{', '.join(n for n, v in node.items() if isinstance(v, dict)) or 'none'}")
            node = node[k]
        node[keys[-1]] = value
    return config.from_dict(cls, data, SECTIONS[cls])

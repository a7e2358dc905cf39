"""What the DVC stages need besides search, retrain and evaluate: preparing data, keeping metrics, reporting.

``prepare`` gathers the sets one half of the pipeline (denoising or SR) reads into the
pipeline's data folder (``data/raw``): a set already complete there is kept, one found in
a local copy (``data_root``, else ``HINAS_DATA_ROOT``) is symlinked or copied, any other
is downloaded (``hinas.data.fetch``). It then writes a manifest holding only each set's
image count and content digest, so a stage reruns when its pictures change, not when
they move to another machine. A set found nowhere fails the stage with what is missing
and where to get it, and leaves the last good manifest in place.

``keep`` copies what an experiment should keep out of a run directory (which is
git-ignored) into small tracked files: flat numeric metrics, per-epoch numbers for
plots, and the genotype. ``report`` gathers the evaluations into one table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hinas.data.fetch import DownloadError, source_of
from hinas.data.fetch import fetch as download
from hinas.data.images import DATA_ROOT_ENV, NAMED_SETS, ImageSet, folder_images, load_images, named_set
from hinas.errors import ConfigError, DataError
from hinas.files import atomic_write_bytes, write_json
from hinas.jobs.evaluate import results_markdown

EMBEDDED_SETS = ("embedded", "embedded-train", "embedded-val")
TASKS = ("denoise", "sr")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section of ``params.yaml``: the sets each half of the pipeline reads, and where they come from."""

    root: str = "data/raw"
    """The pipeline's data folder, which the search, retrain and evaluate sections name as their ``data_root``."""
    data_root: str = ""
    """Local copies to take sets from before downloading; empty means ``HINAS_DATA_ROOT`` (unset: none)."""
    link: Literal["symlink", "copy"] = "symlink"
    """How a local copy goes into ``root``: a symlink per folder (no space used) or a copy."""
    download: bool = True
    """Download a set found in neither folder from its public source (``hinas.data.fetch.SOURCES``)."""
    denoise: tuple[str, ...] = ()
    """The sets the denoising half reads (``prepare --task denoise``)."""
    sr: tuple[str, ...] = ()
    """The sets the super-resolution half reads (``prepare --task sr``)."""

    def __post_init__(self) -> None:
        for task in TASKS:
            unknown = [s for s in getattr(self, task) if s not in NAMED_SETS and s not in EMBEDDED_SETS and not Path(s).is_dir()]
            if unknown:
                raise ConfigError(f"data.{task}: unknown set(s) {', '.join(unknown)}; choose from "
                                  f"{', '.join(EMBEDDED_SETS + tuple(NAMED_SETS))}, or an existing folder of images")
        if not self.root and any(s in NAMED_SETS for task in TASKS for s in getattr(self, task)):
            raise ConfigError("data.root is empty, but named sets need a folder to gather them in (e.g. data/raw)")

    def sets(self, task: str | None = None) -> tuple[str, ...]:
        """The sets of one half, or of both (each once) when ``task`` is None."""
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        return tuple(dict.fromkeys(s for t in TASKS if task in (None, t) for s in getattr(self, t)))


def set_digest(images: ImageSet) -> str:
    """sha256 over the names and bytes of every file of a set, in order."""
    h = hashlib.sha256()
    for name, path in zip(images.names, images.paths):
        h.update(name.encode())
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()


def prepare(cfg: DataConfig, task: str | None, out: str | Path, echo: Callable[[str], object] = print) -> dict[str, Any]:
    """Gather the sets of ``task`` (both halves when None) into ``cfg.root`` and write their manifest to ``out``.

    Every set that can be had is gathered, and ``echo`` says where each came from; then a
    DataError lists every set that could not, and ``out`` is left as it was.
    """
    root = Path(cfg.root)
    local = cfg.data_root or os.environ.get(DATA_ROOT_ENV) or ""
    failed_sources: dict[str, str] = {}
    manifest, missing = {}, []
    for name in cfg.sets(task):
        try:
            images, how = _gather(name, cfg, root, Path(local) if local else None, failed_sources)
        except DataError as e:
            missing.append(f"  {name}: {e}")
            continue
        manifest[name] = {"images": len(images), "sha256": set_digest(images)}
        echo(f"{name}: {len(images)} images, sha256 {manifest[name]['sha256'][:12]} ({how})")
    if missing:
        raise DataError(f"{len(missing)} data set(s) of {'the ' + task + ' half of ' if task else ''}the pipeline could not "
                        f"be gathered into {root}/ (the others are in place):\n" + "\n".join(missing))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"sets": manifest})
    return manifest


def _gather(name: str, cfg: DataConfig, root: Path, local: Path | None, failed: dict[str, str]) -> tuple[ImageSet, str]:
    """The set, once it is complete in ``root``, and how it got there; DataError saying what is missing and where to get it."""
    if name not in NAMED_SETS:
        return load_images(name), "embedded in scikit-image" if name in EMBEDDED_SETS else f"folder {name}"
    if (problem := _incomplete(name, root)) is None:
        return named_set(name, root), f"already in {root}"
    tried = [problem]
    if local is not None:
        if (local_problem := _incomplete(name, local)) is None:
            _link(name, local, root, cfg.link)
            if (problem := _incomplete(name, root)) is None:
                return named_set(name, root), f"{'symlinked' if cfg.link == 'symlink' else 'copied'} from {local}"
            raise DataError(f"{problem}; remove what is there to take the set from {local}")  # not downloaded over it either
        else:
            tried.append(local_problem)
    else:
        tried.append(f"no local copy ({DATA_ROOT_ENV} and data.data_root are unset)")
    source = source_of(name)
    if source is not None and cfg.download:
        if source.name not in failed:
            try:
                download([source.name], root, progress=sys.stderr.isatty())
            except DownloadError as e:
                failed[source.name] = e.reason
            except DataError as e:
                failed[source.name] = str(e)
        if source.name not in failed:
            return named_set(name, root), f"downloaded from {source.url}"
        tried.append(f"downloading failed: {failed[source.name]}")
    where = " and ".join(f"{root / f}/" for f in NAMED_SETS[name].folders)
    get = f"download {source.url}" if source else "hinas knows no download for it"
    raise DataError("; ".join(tried) + f". To get it: {get}, and place its images in {where} "
                    f"or in a local copy ({DATA_ROOT_ENV})")


def _incomplete(name: str, base: Path) -> str | None:
    """None when ``base`` holds every image of the named set, else what is wrong, naming the folders."""
    spec = NAMED_SETS[name]
    found = 0
    for folder in (base / f for f in spec.folders):
        if not folder.is_dir():
            return f"no {folder}/"
        try:
            found += len(folder_images(folder))
        except DataError:
            return f"no images in {folder}/"
    if found != spec.count:
        return f"{' and '.join(f'{base / f}/' for f in spec.folders)} hold {found} images, not {spec.count}"
    return None


def _link(name: str, local: Path, root: Path, how: str) -> None:
    """Symlink or copy the set's folders from ``local`` into ``root``; a folder of real files already there is never replaced."""
    for folder in NAMED_SETS[name].folders:
        dest = root / folder
        if dest.is_symlink():
            dest.unlink()
        elif dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = (local / folder).resolve()
        if how == "symlink":
            dest.symlink_to(source, target_is_directory=True)
        else:
            part = dest.with_name(f".{dest.name}.part")
            shutil.rmtree(part, ignore_errors=True)
            shutil.copytree(source, part)
            os.replace(part, dest)


def flat_results(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Evaluation summary rows as ``{task}/{sigma or scale}/{set}/{psnr, ssim, input_psnr}`` numbers."""
    flat = {}
    for r in rows:
        level = f"sigma{r['sigma']:g}" if r["task"] == "denoise" else f"x{r['scale']}"
        for key in ("psnr", "ssim", "input_psnr"):
            flat[f"{r['task']}/{level}/{r['set']}/{key}"] = r[key]
    return flat


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def keep(run: str | Path, dest: str | Path) -> list[Path]:
    """Write a run's flat numeric metrics, its per-epoch (or per-validation) numbers and its genotype under ``dest``.

    DVC experiments keep git-tracked files but not the git-ignored run directories, and
    ``dvc exp show`` wants one number per column: no strings, lists or genotypes in metrics.
    """
    run, dest = Path(run), Path(dest)
    metrics = json.loads((run / "metrics.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    written = [write_json(dest / "metrics.json", {**_numbers(metrics), **flat_results(metrics.get("results", []))})]
    if (run / "history.json").is_file():
        rows = [_numbers(r) for r in json.loads((run / "history.json").read_text())]
        written.append(write_json(dest / "history.json", rows))
    if (run / "genotype.json").is_file():
        written.append(dest / "genotype.json")
        atomic_write_bytes(written[-1], (run / "genotype.json").read_bytes())
    return written


def report(runs: str | Path, out_json: str | Path, out_md: str | Path) -> dict[str, Any]:
    """Collect every ``evaluate_*/*/metrics.json`` under ``runs`` into flat metrics and a Markdown table."""
    runs = Path(runs)
    rows = [r for path in sorted(runs.glob("evaluate_*/*/metrics.json")) for r in json.loads(path.read_text())["results"]]
    flat = flat_results(rows)
    if not rows:
        raise FileNotFoundError(f"no evaluation metrics under {runs}/evaluate_*/")
    write_json(Path(out_json), flat)
    atomic_write_bytes(Path(out_md), ("# Results\n\n" + results_markdown(rows) + "\n").encode())
    return flat


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hinas.studies.pipeline", description="Steps of the DVC stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    kept = sub.add_parser("keep", help=keep.__doc__.split("\n")[0])
    kept.add_argument("run", help="a finished search, retrain or evaluate run directory")
    kept.add_argument("dest", help="tracked folder for metrics.json, history.json and genotype.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for path in keep(args.run, args.dest):
            print(f"kept: {path}")
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot keep the results of {args.run}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

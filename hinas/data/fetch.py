"""Download the raw benchmark data into a data root laid out as ``hinas.data.images.NAMED_SETS`` expects.

Used by the pipeline's ``prepare`` stage (``hinas.studies.pipeline``) and on its own
(``python -m hinas.data.fetch NAME... --data-root DIR``). Downloads go through pooch
(retries, a progress bar, and its sha256 check): each archive must match the
``SOURCES`` table or, where the table has none, the lock file that the first fetch
wrote (trust on first use), so a later fetch cannot silently pull different pictures.
Only the mapped image members are extracted, into a temporary folder inside the data
root that is checked and then renamed into place: an interrupted or refused fetch
leaves no half-written folder behind, and the lock changes only after a fetch succeeded.

Left out: Manga109 (its licence needs a request form), Kodak24, McMaster and T91
(not in the paper's pipeline; no source checked here). B100 comes from the
BSDS500 validation split, not from the EDSR benchmark tarball's PNG copy of the
same 100 pictures, so that one archive alone writes ``BSD100/``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import pooch
import requests

from hinas.data.images import DATA_ROOT_ENV, IMAGE_SUFFIXES, NAMED_SETS, folder_images, named_set
from hinas.errors import ConfigError, DataError
from hinas.files import write_json

LOCK_NAME = "sources.lock.json"
"""Default lock file, inside the data root, so that it travels with the images it pins."""


@dataclass(frozen=True)
class Source:
    """One downloadable archive and where its images go under the data root.

    ``members`` maps a path prefix inside the archive to a folder under the data
    root; image files below the prefix keep their relative paths. The result is
    checked with ``counts`` (folder -> image count) when given, else with the
    ``NAMED_SETS`` entries in ``sets``; every mapped folder must be checked.
    """

    name: str
    url: str
    archive: Literal["zip", "tar"]
    members: Mapping[str, str]
    sets: tuple[str, ...] = ()
    sha256: str | None = None
    counts: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.archive not in ("zip", "tar"):
            raise ConfigError(f"source {self.name}: archive must be 'zip' or 'tar' (tar.gz, tgz too), got {self.archive!r}")
        unknown = [s for s in self.sets if s not in NAMED_SETS]
        if unknown:
            raise ConfigError(f"source {self.name}: unknown sets {unknown}; known: {', '.join(NAMED_SETS)}")
        checked = set(self.counts) if self.counts else {f for s in self.sets for f in NAMED_SETS[s].folders}
        if not self.members or checked != set(self.members.values()):
            raise ConfigError(
                f"source {self.name}: the mapped folders {sorted(set(self.members.values()))} must be exactly "
                f"the folders checked by counts or sets, {sorted(checked)}"
            )

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.members.values()))


_BSR = "BSR/BSDS500/data/images/"

SOURCES = {
    s.name: s
    for s in (
        # Berkeley's own tarball (about 70 MB: images, ground truth, benchmark code). Layout
        # BSR/BSDS500/data/images/{train,val,test}/*.jpg, 200/100/200 images. The older
        # http://www.eecs.berkeley.edu/... address redirects here. One third-party project pins
        # sha256 97e49d31764f3912f0c4122707d53062ac9e783ba0f095e447a4d53c1a41af8e, unchecked here.
        Source(
            "BSDS500",
            "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
            "tar",
            {_BSR + "train/": "BSDS500_train_test/train", _BSR + "test/": "BSDS500_train_test/test", _BSR + "val/": "BSD100"},
            sets=("BSD500-train", "BSD500-val", "BSD500-test", "BSD500-trainval", "B100"),
        ),
        # The DIV2K authors' zips (ETH Zurich): DIV2K_train_HR/0001.png ... 0800.png, 3.5 GB;
        # DIV2K_valid_HR/0801.png ... 0900.png, 0.4 GB.
        Source(
            "DIV2K-train",
            "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
            "zip",
            {"DIV2K_train_HR/": "DIV2K/DIV2K_train_HR"},
            sets=("DIV2K-train",),
        ),
        Source(
            "DIV2K-valid",
            "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
            "zip",
            {"DIV2K_valid_HR/": "DIV2K/DIV2K_valid_HR"},
            sets=("DIV2K-valid",),
        ),
        # The EDSR authors' SR benchmark tarball (uncompressed tar, about 250 MB):
        # benchmark/{Set5,Set14,B100,Urban100}/HR/*.png next to LR_bicubic/X{2,3,4}/, which
        # are not extracted (hinas makes its own LR images). torchsr pins md5 4ace41d33c2384b97e6b320cd0afd6ba.
        Source(
            "SR-benchmark",
            "https://cv.snu.ac.kr/research/EDSR/benchmark.tar",
            "tar",
            {"benchmark/Set5/HR/": "Set5/HR", "benchmark/Set14/HR/": "Set14", "benchmark/Urban100/HR/": "Urban100"},
            sets=("Set5", "Set14", "Urban100"),
        ),
        # The DnCNN authors' repository, which the denoising literature links for Set12 and
        # BSD68 (gray PNGs in testsets/) and the Train400 training patches' source images. A
        # branch archive: its top folder is DnCNN-master/, and the lock file pins its bytes.
        Source(
            "DnCNN-testsets",
            "https://github.com/cszn/DnCNN/archive/refs/heads/master.zip",
            "zip",
            {
                "DnCNN-master/testsets/Set12/": "Set12",
                "DnCNN-master/testsets/BSD68/": "BSD68",
                "DnCNN-master/TrainingCodes/DnCNN_TrainingCodes_v1.0/data/Train400/": "Train400",
            },
            sets=("Set12", "BSD68", "Train400"),
        ),
        # Colour BSD68, as PNGs in CBSD68/original_png/0000.png ... 0067.png of a widely used
        # GitHub mirror (the other folders hold pre-noised copies, not extracted).
        Source(
            "CBSD68",
            "https://github.com/clausmichele/CBSD68-dataset/archive/refs/heads/master.zip",
            "zip",
            {"CBSD68-dataset-master/CBSD68/original_png/": "CBSD68"},
            sets=("CBSD68",),
        ),
    )
}
"""The public archives of the paper pipeline's data sets, by name."""


def source_names(names: Sequence[str], sources: Mapping[str, Source] = SOURCES) -> list[str]:
    """The table's spelling of each name, matched without regard to case (``bsds500`` is ``BSDS500``)."""
    by_lower = {name.lower(): name for name in sources}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise ConfigError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(sources)}")
    return list(dict.fromkeys(by_lower[n.lower()] for n in names))


def source_of(set_name: str, sources: Mapping[str, Source] = SOURCES) -> Source | None:
    """The source whose archive provides the named set, if any."""
    return next((s for s in sources.values() if set_name in s.sets), None)


def fetch(
    names: Sequence[str],
    data_root: str | Path,
    *,
    sources: Mapping[str, Source] = SOURCES,
    lock_path: str | Path | None = None,
    timeout: float = 60,
    retries: int = 3,
    progress: bool = True,
) -> dict[str, str]:
    """Download and unpack each named source unless its folders are already complete.

    Names match ``sources`` without regard to case. Returns name -> ``"fetched"`` or
    ``"skipped"``. A failed download is tried ``retries`` more times (pooch waits 1, 2, ...
    seconds between tries). A fetched archive's url, sha256 and size go into the lock file
    (default ``<data_root>/sources.lock.json``); folders already there but incomplete are replaced.
    """
    names = source_names(names, sources)
    root = Path(data_root)
    root.mkdir(parents=True, exist_ok=True)
    lock_path = Path(lock_path) if lock_path is not None else root / LOCK_NAME
    done = {}
    for name in names:
        source = sources[name]
        if _complete(source, root):
            done[name] = "skipped"
            continue
        entry = _fetch_one(source, root, lock_path, timeout, retries, progress)
        lock = _read_lock(lock_path)
        lock[name] = entry
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(lock_path, lock)
        done[name] = "fetched"
    return done


def _fetch_one(source: Source, root: Path, lock_path: Path, timeout: float, retries: int, progress: bool) -> dict[str, str | int]:
    """Download, check and unpack into a temporary folder inside ``root``, then rename into place."""
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{source.name}-", dir=root))
    tree = work / "tree"
    try:
        archive = _download(source, root, work, _expected_hash(source, lock_path), timeout, retries, progress)
        _extract(source, archive, tree)
        try:
            _check(source, tree)
        except DataError as e:
            raise DataError(
                f"{source.name}: the archive from {source.url} does not hold the expected images ({e}); "
                "its layout may have changed: update members in hinas.data.fetch.SOURCES"
            ) from e
        _place(source, tree, root, work)
        return {"url": source.url, "sha256": pooch.file_hash(str(archive)), "bytes": archive.stat().st_size}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _complete(source: Source, root: Path) -> bool:
    try:
        _check(source, root)
    except DataError:
        return False
    return True


def _check(source: Source, root: Path) -> None:
    """Raise DataError unless ``root`` holds every image ``source`` provides."""
    if source.counts:
        for folder, count in source.counts.items():
            found = len(folder_images(root / folder))
            if found != count:
                raise DataError(f"{root / folder}: found {found} images, expected {count}")
    else:
        for name in source.sets:
            named_set(name, root)


def _expected_hash(source: Source, lock_path: Path) -> tuple[str, str] | None:
    """(sha256, how to accept a new archive) from the table, else from the lock entry for the same url;
    None (trust on first use) when neither has one."""
    entry = _read_lock(lock_path).get(source.name)
    if source.sha256:
        return source.sha256, "hinas.data.fetch.SOURCES pins that sha256: if the new archive is right, update it there"
    if isinstance(entry, dict) and entry.get("url") == source.url and entry.get("sha256"):
        return entry["sha256"], f"{lock_path} pins that sha256: if the new archive is right, delete its {source.name!r} entry"
    return None


def _download(source: Source, root: Path, work: Path, expected: tuple[str, str] | None, timeout: float, retries: int,
              progress: bool) -> Path:
    """Download ``source.url`` into ``work`` with pooch, checked against ``expected``; the archive's path."""
    fname = "archive"
    store = pooch.create(path=work, base_url="", registry={fname: f"sha256:{expected[0]}" if expected else None},
                         urls={fname: source.url}, retry_if_failed=retries)
    try:
        return Path(store.fetch(fname, downloader=pooch.HTTPDownloader(progressbar=progress, timeout=timeout)))
    except requests.HTTPError as e:
        raise DownloadError(source, root, f"HTTP {e.response.status_code} {e.response.reason}") from e
    except requests.RequestException as e:
        raise DownloadError(source, root, str(e) or type(e).__name__) from e
    except ValueError as e:  # pooch: the sha256 differs from the expected one (it deleted the download)
        if expected is None:
            raise
        mismatch = str(e).split(". ")[0]  # "SHA256 hash of downloaded file (archive) does not match ...: expected X but got Y"
        raise DataError(
            f"{source.name}: refused the archive from {source.url}: {mismatch}. It changed upstream or was damaged in "
            f"transit; the data folders were left as they were. {expected[1]}"
        ) from e


class DownloadError(DataError):
    """A download that did not arrive (no network, an HTTP error), as against one that arrived wrong; ``reason`` says why."""

    def __init__(self, source: Source, root: Path, reason: str) -> None:
        self.reason = reason
        where = ", ".join(f"{root / f}/" for f in source.folders)
        super().__init__(
            f"cannot fetch {source.name} from {source.url} ({reason}); this machine may be offline. "
            f"Download it elsewhere and place its images under {where}, "
            f"or point {DATA_ROOT_ENV} / data_root at an existing copy"
        )


def _read_lock(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        lock = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"lock file {path} is not valid JSON ({e}); fix it or delete it to trust the next download") from e
    if not isinstance(lock, dict):
        raise DataError(f"lock file {path} must hold a JSON object of source name -> {{url, sha256, bytes}}")
    return lock


_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _extract(source: Source, archive: Path, tree: Path) -> None:
    """Copy the mapped image members into ``tree``, laid out like the data root."""
    try:
        with contextlib.closing(_entries(archive, source.archive)) as entries:
            for name, kind, read in entries:
                target = _target(_member_path(source, name), source.members)
                if target is None or kind == "dir" or target.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if kind != "file":
                    raise DataError(
                        f"{source.name}: the archive from {source.url} has {name!r} as a {kind}, not a regular file; "
                        "refusing to extract it"
                    )
                dest = tree / target
                dest.parent.mkdir(parents=True, exist_ok=True)
                with read() as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except _CORRUPT as e:
        raise DataError(
            f"{source.name}: the archive from {source.url} is damaged or not a {source.archive} file ({e}); "
            "the data folders were left as they were"
        ) from e


def _member_path(source: Source, name: str) -> PurePosixPath:
    """The member's path; any member that could land outside the extraction folder refuses the whole archive."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DataError(
            f"{source.name}: the archive from {source.url} has a member {name!r} that points outside "
            "its folder (absolute or with '..'); refusing to extract it"
        )
    return path


def _target(path: PurePosixPath, members: Mapping[str, str]) -> PurePosixPath | None:
    """Where member ``path`` goes under the data root, or None when no prefix maps it."""
    for prefix, folder in members.items():
        head = PurePosixPath(prefix).parts
        if path.parts[: len(head)] == head and len(path.parts) > len(head):
            return PurePosixPath(folder, *path.parts[len(head) :])
    return None


def _entries(archive: Path, kind: str) -> Iterator[tuple[str, str, Callable[[], IO[bytes]]]]:
    """(name, "file" | "dir" | "symlink" | "link" | "special file", opener) for each archive member."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                what = "dir" if info.is_dir() else "symlink" if (mode & 0o170000) == 0o120000 else "file"
                yield info.filename, what, lambda info=info: zf.open(info)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                what = (
                    "file" if member.isfile() else "dir" if member.isdir()
                    else "symlink" if member.issym() else "link" if member.islnk() else "special file"
                )
                yield member.name, what, lambda member=member: tf.extractfile(member)


def _place(source: Source, tree: Path, root: Path, trash: Path) -> None:
    """Rename each checked folder from ``tree`` into ``root``; one already there moves to ``trash``."""
    for i, folder in enumerate(source.folders):
        dest = root / folder
        if dest.exists():
            os.replace(dest, trash / f"old-{i}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tree / folder, dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hinas.data.fetch",
        description="Download data sets into a data root laid out as hinas expects; complete ones are skipped.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(SOURCES)} (any case)")
    parser.add_argument("--data-root", help=f"folder to fill (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--lock", help=f"lock file of archive hashes (default: DATA_ROOT/{LOCK_NAME})")
    parser.add_argument("--timeout", type=float, default=60, help="seconds without data before giving up (default: 60)")
    parser.add_argument("--retries", type=int, default=3, help="tries after a failed download (default: 3)")
    args = parser.parse_args(argv)
    root = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        parser.error(f"--data-root is required when {DATA_ROOT_ENV} is unset")
    try:
        done = fetch(args.names, root, sources=SOURCES, lock_path=args.lock, timeout=args.timeout, retries=args.retries)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, status in done.items():
        print(f"{status} {name}: {', '.join(str(Path(root) / f) for f in SOURCES[name].folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

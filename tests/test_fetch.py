"""The dataset fetcher, offline: archives served by a loopback HTTP server, downloaded through pooch."""

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from hinas.data import fetch as fetch_module
from hinas.data.fetch import SOURCES, Source, fetch, main, source_names, source_of
from hinas.data.images import NAMED_SETS
from hinas.errors import ConfigError, DataError

PREFIX = "BSR/BSDS500/data/images/"
SUFFIX = {"zip": ".zip", "tar": ".tar.gz"}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def photos(offset: int = 0) -> dict[str, bytes]:
    """Small crops of scikit-image's photos laid out like the BSDS500 tarball, with files that must not be extracted."""
    cut = np.s_[offset : offset + 48, offset : offset + 48]
    return {
        PREFIX + "train/camera.png": png(skimage.data.camera()[cut]),
        PREFIX + "train/more/astronaut.png": png(skimage.data.astronaut()[cut]),
        PREFIX + "train/Thumbs.db": b"not an image",
        PREFIX + "val/coins.png": png(skimage.data.coins()[cut]),
        "BSR/BSDS500/data/groundTruth/train/camera.png": png(skimage.data.moon()[cut]),
    }


def write_archive(path: Path, kind: str, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, target in (symlinks or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
    return path.read_bytes()


def toy(url: str, **changes) -> dict[str, Source]:
    spec = {"members": {PREFIX + "train/": "train", PREFIX + "val/": "val"}, "counts": {"train": 2, "val": 1}}
    spec.update(changes)
    return {"toy": Source("toy", url, "zip" if url.endswith(".zip") else "tar", **spec)}


class QuietHandler(SimpleHTTPRequestHandler):
    fail_next = 0
    """Answer this many next requests with HTTP 503 (a flaky server), then serve files."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if QuietHandler.fail_next:
            QuietHandler.fail_next -= 1
            self.send_error(503)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(folder served, base url) of an HTTP server on an ephemeral localhost port."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_fetch_extracts_mapped_images_records_hash_then_skips(server, tmp_path, kind):
    www, base = server
    members = photos()
    data = write_archive(www / f"toy{SUFFIX[kind]}", kind, members)
    sources = toy(f"{base}/toy{SUFFIX[kind]}")
    root = tmp_path / "data"

    assert fetch(["toy"], root, sources=sources, progress=False) == {"toy": "fetched"}
    assert tree(root / "train") == {
        "camera.png": members[PREFIX + "train/camera.png"],
        "more/astronaut.png": members[PREFIX + "train/more/astronaut.png"],
    }
    assert tree(root / "val") == {"coins.png": members[PREFIX + "val/coins.png"]}
    lock = json.loads((root / "sources.lock.json").read_text())
    assert lock == {"toy": {"url": sources["toy"].url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    assert sorted(p.name for p in root.iterdir()) == ["sources.lock.json", "train", "val"]

    (www / f"toy{SUFFIX[kind]}").unlink()  # a skip must not download
    assert fetch(["toy"], root, sources=sources, progress=False) == {"toy": "skipped"}


def test_incomplete_folder_is_replaced_and_lock_path_is_honoured(server, tmp_path):
    www, base = server
    write_archive(www / "toy.zip", "zip", photos())
    root, lock = tmp_path / "data", tmp_path / "elsewhere" / "lock.json"
    (root / "train").mkdir(parents=True)
    (root / "train" / "stale.png").write_bytes(png(skimage.data.moon()[:8, :8]))

    assert fetch(["toy"], root, sources=toy(f"{base}/toy.zip"), lock_path=lock, progress=False) == {"toy": "fetched"}
    assert sorted(tree(root / "train")) == ["camera.png", "more/astronaut.png"]
    assert "toy" in json.loads(lock.read_text()) and not (root / "sources.lock.json").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_changed_archive_is_refused_and_data_left_alone(server, tmp_path, kind):
    www, base = server
    name = f"toy{SUFFIX[kind]}"
    old = hashlib.sha256(write_archive(www / name, kind, photos())).hexdigest()
    sources, root = toy(f"{base}/{name}"), tmp_path / "data"
    fetch(["toy"], root, sources=sources, progress=False)
    (root / "train" / "camera.png").unlink()  # incomplete, so the next fetch downloads again
    before = tree(root)

    new = hashlib.sha256(write_archive(www / name, kind, photos(offset=10))).hexdigest()
    with pytest.raises(DataError, match="toy") as err:
        fetch(["toy"], root, sources=sources, retries=0, progress=False)
    assert old in str(err.value) and new in str(err.value) and sources["toy"].url in str(err.value)
    assert tree(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["sources.lock.json", "train", "val"]


def test_sha256_in_the_table_wins_over_first_use(server, tmp_path):
    www, base = server
    got = hashlib.sha256(write_archive(www / "toy.zip", "zip", photos())).hexdigest()
    with pytest.raises(DataError, match=f"expected sha256:{'0' * 64} but got {got}.*SOURCES pins"):
        fetch(["toy"], tmp_path / "data", sources=toy(f"{base}/toy.zip", sha256="0" * 64), retries=0, progress=False)
    assert not (tmp_path / "data" / "train").exists() and not (tmp_path / "data" / "sources.lock.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_says_how_to_use_a_local_copy(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/toy.zip"
    root = tmp_path / "data"
    with pytest.raises(DataError, match="HINAS_DATA_ROOT") as err:
        fetch(["toy"], root, sources=toy(url), timeout=5, retries=0, progress=False)
    assert "cannot fetch toy from " + url in str(err.value) and str(root / "train") in str(err.value)
    assert list(root.iterdir()) == []


def test_http_error_is_a_data_error(server, tmp_path):
    _, base = server
    with pytest.raises(DataError, match="HTTP 404.*HINAS_DATA_ROOT"):
        fetch(["toy"], tmp_path / "data", sources=toy(f"{base}/missing.zip"), retries=0, progress=False)


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("evil", ["../evil.png", PREFIX + "train/../../../../evil.png", "/tmp/hinas-evil.png"])
def test_member_outside_the_folder_is_refused(server, tmp_path, kind, evil):
    www, base = server
    write_archive(www / f"toy{SUFFIX[kind]}", kind, {**photos(), evil: png(skimage.data.camera()[:8, :8])})
    root = tmp_path / "data"
    with pytest.raises(DataError, match="outside"):
        fetch(["toy"], root, sources=toy(f"{base}/toy{SUFFIX[kind]}"), progress=False)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/hinas-evil.png").exists()


def test_symlink_member_is_refused(server, tmp_path):
    www, base = server
    write_archive(www / "toy.tar.gz", "tar", photos(), symlinks={PREFIX + "val/link.png": "/etc/passwd"})
    root = tmp_path / "data"
    with pytest.raises(DataError, match="link.png.*symlink"):
        fetch(["toy"], root, sources=toy(f"{base}/toy.tar.gz"), progress=False)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_damaged_archive_leaves_no_target_folder(server, tmp_path, kind, damage):
    www, base = server
    members = {PREFIX + f"train/{i}.png": png(skimage.data.astronaut()[i : i + 48, :48]) for i in range(6)}
    members[PREFIX + "val/coins.png"] = png(skimage.data.coins()[:48, :48])
    data = write_archive(www / f"toy{SUFFIX[kind]}", kind, members)
    cut = len(data) * 6 // 10  # past the first members, so extraction has begun when it fails
    data = data[:cut] if damage == "truncated" else data[:cut] + bytes(len(data) // 10) + data[cut + len(data) // 10 :]
    (www / f"toy{SUFFIX[kind]}").write_bytes(data)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="damaged"):
        fetch(["toy"], root, sources=toy(f"{base}/toy{SUFFIX[kind]}", counts={"train": 6, "val": 1}), progress=False)
    assert list(root.iterdir()) == []


def test_archive_without_the_expected_images_is_not_placed(server, tmp_path):
    www, base = server
    write_archive(www / "toy.zip", "zip", photos())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="found 2 images, expected 3.*update members"):
        fetch(["toy"], root, sources=toy(f"{base}/toy.zip", counts={"train": 3, "val": 1}), progress=False)
    assert list(root.iterdir()) == []


def test_main_reports_fetched_and_exits_2_on_data_error(server, tmp_path, monkeypatch, capsys):
    www, base = server
    write_archive(www / "toy.zip", "zip", photos())
    root = tmp_path / "data"
    monkeypatch.setattr(fetch_module, "SOURCES", toy(f"{base}/toy.zip"))
    assert main(["toy", "--data-root", str(root)]) == 0
    assert f"fetched toy: {root / 'train'}, {root / 'val'}" in capsys.readouterr().out
    assert main(["toy", "--data-root", str(root)]) == 0
    assert "skipped toy" in capsys.readouterr().out

    monkeypatch.setattr(fetch_module, "SOURCES", toy(f"http://127.0.0.1:{free_port()}/toy.zip"))
    assert main(["toy", "--data-root", str(tmp_path / "other"), "--timeout", "5", "--retries", "0"]) == 2
    assert "HINAS_DATA_ROOT" in capsys.readouterr().err
    assert main(["nope", "--data-root", str(root)]) == 2
    assert "unknown source(s) nope; known: toy" in capsys.readouterr().err


def test_sources_table_is_consistent():
    folders = [f for s in SOURCES.values() for f in s.folders]
    assert len(folders) == len(set(folders)), "two sources write the same folder"
    for name, source in SOURCES.items():
        assert name == source.name and source.sets and source.url.startswith("https://")
        assert all(prefix.endswith("/") for prefix in source.members)
    provided = {s for source in SOURCES.values() for s in source.sets}
    assert provided == set(NAMED_SETS) - {"Manga109", "Kodak24", "McMaster", "T91"}


def test_source_must_check_every_mapped_folder():
    with pytest.raises(ConfigError, match="exactly"):
        Source("x", "https://example.org/x.zip", "zip", {"a/": "A", "b/": "B"}, counts={"A": 1})
    with pytest.raises(ConfigError, match="'zip' or 'tar'"):
        Source("x", "https://example.org/x.rar", "rar", {"a/": "A"}, counts={"A": 1})
    with pytest.raises(ConfigError, match="unknown sets"):
        Source("x", "https://example.org/x.zip", "zip", {"a/": "A"}, sets=("Set6",))
    with pytest.raises(ConfigError, match="unknown source"):
        fetch(["nope"], "/nonexistent", sources={})


def test_a_failed_download_is_retried(server, tmp_path, monkeypatch):
    www, base = server
    write_archive(www / "toy.zip", "zip", photos())
    monkeypatch.setattr(QuietHandler, "fail_next", 1)
    with pytest.raises(DataError, match="HTTP 503"):
        fetch(["toy"], tmp_path / "a", sources=toy(f"{base}/toy.zip"), retries=0, progress=False)
    monkeypatch.setattr(QuietHandler, "fail_next", 1)
    assert fetch(["toy"], tmp_path / "b", sources=toy(f"{base}/toy.zip"), retries=1, progress=False) == {"toy": "fetched"}
    assert QuietHandler.fail_next == 0 and len(tree(tmp_path / "b" / "train")) == 2


def test_names_match_without_case_and_sets_know_their_source():
    assert source_names(["bsds500", "div2k-train", "DIV2K-train", "sr-benchmark", "dncnn-testsets"]) == [
        "BSDS500", "DIV2K-train", "SR-benchmark", "DnCNN-testsets"]
    with pytest.raises(ConfigError, match="unknown source.*bsds; known: BSDS500, DIV2K-train"):
        source_names(["bsds"])
    assert source_of("B100").name == "BSDS500" and source_of("Set12").name == "DnCNN-testsets"
    assert source_of("T91") is None

"""The code base is `ruff check` clean under pyproject.toml's rules: checked here so that CI fails on a new finding."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    """The ruff next to this interpreter (the dev extras install it), else one on PATH; skip when there is none."""
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found:
        return [found]
    try:
        import ruff  # noqa: F401  (the package's __main__ finds its binary)
    except ImportError:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_finds_nothing():
    cmd = [*_ruff(), "check", ".", "--no-cache"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

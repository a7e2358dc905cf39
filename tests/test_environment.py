"""environment.yml (conda) and pyproject.toml (pip) must describe the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "python-graphviz": "graphviz", "matplotlib-base": "matplotlib"}
CONDA_ONLY = {"python", "pip", "graphviz"}  # the interpreter, the installer, and Graphviz's `dot` binary


def name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_conda_environment_and_pip_extras_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = {name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pip |= {name(r) for r in extra}
    pip.discard("hinas")  # dev pulls in the other extras by naming the package itself
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert "graphviz" in conda  # the dot binary comes with the conda environment
    conda = {CONDA_TO_PIP.get(n, n) for n in conda - CONDA_ONLY}
    assert conda == pip, f"only in environment.yml: {sorted(conda - pip)}; only in pyproject.toml: {sorted(pip - conda)}"


def test_lower_bounds_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for r in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
        m = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    for dep in env["dependencies"]:
        m = isinstance(dep, str) and re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep)
        if m:
            assert pins[CONDA_TO_PIP.get(m.group(1), m.group(1))] == m.group(2), dep

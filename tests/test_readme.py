import re
from pathlib import Path

import torch

from hinas.nas.genotype import Genotype
from hinas.nas.network import Network

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs_and_writes_what_it_says(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"<!-- quickstart[^>]*-->\s*```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    out = tmp_path / "runs" / "quickstart"
    assert Genotype.load(out / "genotype.json") == scope["genotype"]
    assert (out / "genotype.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (out / "genotype.png").stat().st_size > 1000
    model = scope["model"]
    assert isinstance(model, Network) and model.filters == 20
    assert model(torch.rand(1, 1, 24, 24)).shape == (1, 1, 24, 24)


def test_readme_commands_are_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert test_command in README.read_text() and ci.strip().endswith(test_command)


ROOT = README.parent


def test_licence_citation_and_the_cited_reference_ship_with_the_code():
    import tomllib

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert cff["version"] == project["version"] and paper["year"] == 2022 and paper["volume"] == 130
    assert "arXiv:2012.13212" in str(paper["identifiers"])
    cited = [p for p in [*ROOT.glob("hinas/**/*.py"), README, ROOT / "RESULTS.md", *ROOT.glob("notebooks/*.ipynb")]
             if "HINAS.md" in p.read_text()]
    assert cited and (ROOT / "docs" / "HINAS.md").is_file()
    assert not [p.name for p in cited if re.search(r"(?<!docs/)HINAS\.md", p.read_text())]  # every citation has the path


def test_sdist_ships_the_package_and_its_documents_but_no_tests(tmp_path, monkeypatch):
    import subprocess
    import tarfile

    from setuptools import build_meta

    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / name).write_bytes((ROOT / name).read_bytes())
    monkeypatch.chdir(tmp_path / "src")  # a copy of the tree: building writes hinas.egg-info beside the sources
    sdist = build_meta.build_sdist(str(tmp_path / "dist"))
    names = {n.split("/", 1)[1] for n in tarfile.open(tmp_path / "dist" / sdist).getnames() if "/" in n}
    assert {"LICENSE", "CITATION.cff", "CHANGELOG.md", "docs/HINAS.md", "hinas/cli.py", "hinas/py.typed"} <= names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "benchmarks/"))]

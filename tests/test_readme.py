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

"""Notebooks are papermill-parameterised: -p overrides change what they do (nbval runs them with defaults)."""

import json
from pathlib import Path

import papermill as pm

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_each_notebook_has_one_parameters_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path.name
        assert cells[0]["cell_type"] == "markdown", f"{path.name} should open with its explanation"


def test_papermill_parameters_change_the_search(tmp_path):
    out_dir = tmp_path / "search"
    executed = tmp_path / "01.ipynb"
    parameters = {"epochs": 2, "arch_start": 1, "select_from": 1, "patches_per_image": 2, "out_dir": str(out_dir)}
    pm.execute_notebook(NOTEBOOKS / "01_search.ipynb", executed, cwd=tmp_path, kernel_name="python3", progress_bar=False,
                        parameters=parameters)
    history = json.loads((out_dir / "history.json").read_text())
    assert len(history) == 2 and history[0]["arch_loss"] is not None  # arch updates from epoch 1, as asked
    outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
    assert any("epochs searched: 2" in "".join(o.get("text", "")) for o in outputs)

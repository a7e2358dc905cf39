"""Notebooks are papermill-parameterised: -p overrides change what they do (nbval runs them with defaults)."""

import json
import re
from pathlib import Path

import papermill as pm
import pytest
from conftest import uniform_genotype

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_each_notebook_has_one_parameters_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path.name
        assert cells[0]["cell_type"] == "markdown", f"{path.name} should open with its explanation"


def test_the_results_notebook_builds_with_the_runners_default_workers():
    import inspect

    from hinas.studies.results import run_grid

    default = inspect.signature(run_grid).parameters["workers"].default
    assert pm.inspect_notebook(NOTEBOOKS / "05_results.ipynb")["workers"]["default"] == str(default)


def test_papermill_parameters_change_the_search(tmp_path):
    out_dir = tmp_path / "search"
    executed = tmp_path / "01.ipynb"
    parameters = {"preset": "smoke", "epochs": 2, "arch_start": 1, "select_from": 1, "patches_per_image": 2,
                  "out_dir": str(out_dir)}
    pm.execute_notebook(NOTEBOOKS / "01_search.ipynb", executed, cwd=tmp_path, kernel_name="python3", progress_bar=False,
                        parameters=parameters)
    history = json.loads((out_dir / "history.json").read_text())
    assert len(history) == 2 and history[0]["arch_loss"] is not None  # arch updates from epoch 1, as asked
    outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
    assert any("epochs searched: 2" in "".join(o.get("text", "")) for o in outputs)


def _outputs(path: Path) -> list[dict]:
    return [o for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code" for o in c["outputs"]]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_executed_and_show_their_figures(path):
    """A reader on a code host sees what a run shows: figures, tables, text progress; no widgets, reprs or errors."""
    outputs = _outputs(path)
    assert any({"image/png", "image/svg+xml"} & set(o.get("data", {})) for o in outputs), "no figure kept"
    assert not [o for o in outputs if o["output_type"] == "error"]
    shown = [o.get("data", {}) for o in outputs]
    assert not [d for d in shown if "application/vnd.jupyter.widget-view+json" in d]  # blank without a live kernel
    plain = [d["text/plain"] if isinstance(d["text/plain"], str) else "".join(d["text/plain"])
             for d in shown if "text/plain" in d and len(d) == 1]
    assert not [t for t in plain if re.match(r"(PosixPath|SearchSpace|SearchConfig|TrainConfig|EvalConfig)\(", t)], plain


def test_a_genotype_picture_falls_back_to_text_without_dot(tmp_path, monkeypatch, capsys):
    from hinas.nas.space import preset
    from hinas.viz.render import picture

    genotype = uniform_genotype(preset("paper-denoise"), "conv_3x3", (0, 1, 2))
    drawn = picture(genotype)
    assert drawn._repr_svg_().lstrip().startswith(("<?xml", "<svg")) and capsys.readouterr().err == ""
    monkeypatch.setenv("PATH", str(tmp_path))
    text = picture(genotype)
    assert text._repr_svg_() is None and "width path: stem -> x1 -> x1.5 -> x2" in repr(text)
    assert "apt-get install graphviz" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_render_to_html_with_their_figures(path, tmp_path):
    """What a reader's browser gets: the exported page embeds each kept figure; Chromium, where installed, paints it."""
    import shutil
    import subprocess

    import numpy as np
    from nbconvert import HTMLExporter
    from PIL import Image

    html, _ = HTMLExporter().from_filename(str(path))
    kept = sum(1 for o in _outputs(path) if {"image/png", "image/svg+xml"} & set(o.get("data", {})))
    embedded = len(re.findall(r'<img [^>]*src="data:image/(png|svg\+xml);base64,', html))
    assert embedded >= kept > 0
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium here: the HTML was checked, not painted")
    page, shot = tmp_path / f"{path.stem}.html", tmp_path / f"{path.stem}.png"
    page.write_text(html)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
                    "--window-size=1200,2400", page.as_uri()], capture_output=True, timeout=120, check=False)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 128).mean() > 0.01  # text and figures painted, not a blank page

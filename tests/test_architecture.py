"""The layering is a contract: checked here so that CI fails when a module reaches above its layer."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_in_pyproject_hold():
    from importlinter import cli

    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "run lint-imports to see the broken contract"


@pytest.mark.parametrize("module", ["hinas", "hinas.jobs.retrain", "hinas.engine.loop", "hinas.jobs.evaluate",
                                    "hinas.infer.folder"])
def test_importing_the_package_and_its_runs_loads_no_plotting_or_drawing(module):
    code = (f"import sys, {module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'graphviz'}), "
            "'hinas.jobs.search' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == ["[]", "False"], f"import {module} loaded {out}"


def test_the_drawing_helpers_still_load_from_the_package_root_on_first_use():
    import hinas

    assert callable(hinas.plot_alphas) and callable(hinas.draw_genotype) and callable(hinas.search)
    with pytest.raises(AttributeError, match="no attribute"):
        hinas.not_a_name  # noqa: B018

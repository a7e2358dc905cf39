"""hinas: memory-efficient hierarchical neural architecture search for image restoration (HiNAS).

The layers, bottom to top (``import-linter`` keeps them honest, see ``pyproject.toml``):
``errors``/``config``/``files``/``hardware`` -> ``nas`` (the method) -> ``data`` -> ``infer`` -> ``eval``
-> ``engine`` (the one training loop) and ``viz`` -> ``jobs`` (search, retrain, evaluate, demo) -> ``studies`` -> ``cli``.
Importing the package loads neither matplotlib nor graphviz: the drawing helpers load on first use.
"""

from typing import Any

from hinas.errors import ConfigError, GenotypeError, HinasError, RenderError
from hinas.infer.backends import InferenceModel
from hinas.nas.complexity import count_flops, count_params
from hinas.nas.genotype import Genotype, derive
from hinas.nas.network import Network
from hinas.nas.ops import HINAS_OPS, register_op
from hinas.nas.space import PRESETS, SearchSpace, preset
from hinas.nas.supernet import Supernet
from hinas.version import __version__

_LAZY = {"plot_alphas": "hinas.viz.plots", "plot_betas": "hinas.viz.plots", "draw_genotype": "hinas.viz.render",
         "search": "hinas.jobs.search", "retrain": "hinas.jobs.retrain", "evaluate_model": "hinas.eval.scoring"}


def __getattr__(name: str) -> Any:
    """The drawing helpers and the jobs, imported on first use so that ``import hinas`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hinas' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Genotype",
    "GenotypeError",
    "HINAS_OPS",
    "HinasError",
    "InferenceModel",
    "Network",
    "PRESETS",
    "RenderError",
    "SearchSpace",
    "Supernet",
    "__version__",
    "count_flops",
    "count_params",
    "derive",
    "draw_genotype",
    "evaluate_model",
    "plot_alphas",
    "plot_betas",
    "preset",
    "register_op",
    "retrain",
    "search",
]

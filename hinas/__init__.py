"""hinas: memory-efficient hierarchical neural architecture search for image restoration (HiNAS)."""

from .complexity import count_flops, count_params
from .errors import ConfigError, GenotypeError, HinasError, RenderError
from .genotype import Genotype, derive
from .inference import InferenceModel
from .network import Network
from .ops import HINAS_OPS, register_op
from .plots import plot_alphas, plot_betas
from .render import draw_genotype
from .space import PRESETS, SearchSpace, preset
from .supernet import Supernet

__version__ = "0.1.0"

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
    "count_flops",
    "count_params",
    "derive",
    "draw_genotype",
    "plot_alphas",
    "plot_betas",
    "preset",
    "register_op",
]

import logging

import pytest
import torch

from hinas.nas.genotype import Genotype
from hinas.nas.space import SearchSpace


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _hinas_loggers_enabled():
    """A library imported by an earlier test may configure logging with ``disable_existing_loggers``, which silences
    hinas's module loggers for the rest of the session; the tests that read warnings through caplog need them on."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("hinas") and isinstance(logger, logging.Logger):
            logger.disabled = False


@pytest.fixture(scope="module")
def one_thread():
    """Compute on one thread (as the subprocesses of the resume tests do): equal float sums, and spared shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def uniform_genotype(space: SearchSpace, op: str, path) -> Genotype:
    """Every node reads (s1, s0) through ``op``: the cells the authors' parameter counts were taken with."""
    cell = tuple(((op, 0), (op, 1)) for _ in range(space.nodes))
    return Genotype(space, tuple(path), (cell,) * space.layers)


def small_space(**changes) -> SearchSpace:
    """A narrow copy of the paper's denoising space, fast enough for gradient tests on CPU."""
    base = dict(task="denoise", in_channels=1, layers=3, nodes=3, filters=4)
    base.update(changes)
    return SearchSpace(**base)

"""Our bicubic SR baseline against MATLAB's published table: checks resize, rounding, luma and shave together."""

import numpy as np
import pytest

from hinas.data.images import data_root, named_set
from hinas.eval.scoring import bicubic_baseline

MATLAB = {"Set5": (33.66, 30.39, 28.42), "Set14": (30.24, 27.55, 26.00), "B100": (29.56, 27.21, 25.96)}
TOLERANCE = 0.03  # dB; Set14 needs its gray bridge.png read as luma, as MATLAB's scripts do (see rgb_to_y)


@pytest.mark.parametrize("name", sorted(MATLAB))
def test_bicubic_psnr_matches_matlab(name):
    root = data_root()
    if root is None:
        pytest.skip("HINAS_DATA_ROOT is not set; point it at a folder holding Set5, Set14 and BSD100")
    images = list(named_set(name, root))
    for scale, reference in zip((2, 3, 4), MATLAB[name]):
        mean = np.mean([p for p, _ in bicubic_baseline(images, scale).values()])
        assert abs(mean - reference) <= TOLERANCE, f"{name} x{scale}: {mean:.3f} dB vs MATLAB {reference}"

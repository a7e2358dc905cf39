import xml.etree.ElementTree as ET

import pytest
from conftest import uniform_genotype

from hinas.errors import RenderError
from hinas.nas.genotype import Genotype
from hinas.nas.space import preset
from hinas.viz.render import draw_genotype


def three_layer_genotype() -> Genotype:
    space = preset("paper-denoise")
    cells = (
        (("conv_3x3", 0), ("sep_conv_3x3", 1)), (("identity", 1), ("dil_conv_3x3", 2)),
        (("sep_conv_5x5", 0), ("conv_3x3", 3)), (("dil_conv_5x5", 2), ("identity", 4)),
    )
    return Genotype(space, (0, 1, 2), (cells,) * 3)


def test_genotype_renders_to_valid_svg_and_png(tmp_path):
    svg, png = draw_genotype(three_layer_genotype(), tmp_path / "genotype")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for label in ("layer 1 (x1)", "layer 2 (x1.5)", "layer 3 (x2)", "sep_conv_5x5", "dil_conv_5x5", "width path", "stem"):
        assert label in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_dot_gives_one_line_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RenderError) as err:
        draw_genotype(uniform_genotype(preset("paper-sr"), "conv_3x3", (0, 1)), tmp_path / "g")
    assert "\n" not in str(err.value) and "apt-get install graphviz" in str(err.value)

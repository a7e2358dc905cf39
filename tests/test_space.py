import pytest

from hinas.errors import ConfigError
from hinas.nas.ops import HINAS_OPS
from hinas.nas.space import PRESETS, SearchSpace, preset


def test_paper_presets_match_the_authors_search_configs():
    d, s = preset("paper-denoise"), preset("paper-sr")
    assert (d.task, d.in_channels, d.layers, d.nodes, d.filters) == ("denoise", 1, 3, 4, 10)
    assert (s.task, s.in_channels, s.scale, s.layers, s.nodes, s.filters) == ("sr", 3, 4, 2, 3, 8)
    for sp in PRESETS.values():
        assert sp.widths == (1.0, 1.5, 2.0) and sp.ops == HINAS_OPS
        assert sp.sharing == "lwas" and sp.cell_eval == "shared"
    assert len(HINAS_OPS) == 7


def test_cell_edge_counts_follow_the_dag():
    assert SearchSpace(nodes=4).num_edges == 14
    assert SearchSpace(nodes=3).num_edges == 9
    sp = SearchSpace(nodes=4)
    for e, (node, state) in enumerate(sp.edges):
        assert sp.edge_index(node, state) == e


def test_trellis_levels_start_narrow():
    sp = SearchSpace(layers=4)
    assert [list(sp.layer_levels(layer)) for layer in range(5)] == [[0], [0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2]]
    assert sp.legal_moves(0) == [(0, 1), (0, 2)]  # the stem moves to level 0 or 1
    assert sp.legal_moves(2) == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert int(sp.move_mask().sum()) == 2 + 5 + 7 + 7


def test_round_trip_through_plain_data():
    sp = SearchSpace(task="sr", in_channels=3, scale=3, sharing="independent", cell_eval="per_transition")
    assert SearchSpace.from_dict(sp.to_dict()) == sp


@pytest.mark.parametrize(
    "data, message",
    [
        ({"task": "deblur"}, "space.task: 'deblur' is not valid; choose one of 'denoise' | 'sr'"),
        ({"task": "sr", "in_channels": 3, "scale": 5}, "space.scale: 5 is not valid for sr"),
        ({"scale": 2}, "scale must be 1"),
        ({"layers": 0}, "space.layers: must be at least 1"),
        ({"in_channels": 2}, "choose 1 (gray) or 3 (RGB)"),
        ({"widths": [1, 2, 1.5]}, "width factors must increase strictly"),
        ({"widths": [1.5, 2]}, "first width factor must be 1"),
        ({"ops": ["conv_3x3", "conv_7x7"]}, "unknown operation 'conv_7x7'; registered operations: conv_3x3"),
        ({"ops": ["zero"]}, "other than 'zero'"),
        ({"sharing": "global"}, "space.sharing: 'global' is not valid; choose one of 'lwas' | 'tied' | 'independent'"),
        ({"layers": "3"}, "space.layers: expected an integer, got '3'"),
        ({"nodez": 4}, "unknown key(s) 'nodez' (did you mean 'nodes'?); valid keys: cell_eval, filters"),
    ],
)
def test_bad_settings_name_the_key_and_what_is_valid(data, message):
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_dict(data)
    assert message in str(err.value)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown search-space preset 'paper'; choose one of paper-denoise, paper-sr"):
        preset("paper")

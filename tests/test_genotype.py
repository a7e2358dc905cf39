import copy
import itertools
import json
import math

import pytest
import torch
from conftest import uniform_genotype

from hinas.errors import GenotypeError
from hinas.nas.genotype import SCHEMA_VERSION, Genotype, derive, derive_cell, viterbi_path
from hinas.nas.space import MOVES, SearchSpace, preset
from hinas.nas.supernet import transition_probs


def legal_paths(space: SearchSpace):
    for path in itertools.product(range(space.levels), repeat=space.layers):
        prev = 0
        if all(abs(level - p) <= 1 for level, p in zip(path, (prev,) + path[:-1])):
            yield path


def path_prob(space, probs, path):
    prob, prev = 1.0, 0
    for layer, level in enumerate(path):
        prob *= float(probs[layer, prev, MOVES.index(level - prev)])
        prev = level
    return prob


def test_number_of_legal_paths_matches_the_paper():
    assert len(list(legal_paths(SearchSpace(layers=3)))) == 12
    assert len(list(legal_paths(SearchSpace(layers=2)))) == 5


@pytest.mark.parametrize("layers, widths", [(1, (1, 2)), (2, (1, 1.5, 2)), (3, (1, 1.5, 2)), (5, (1, 1.5, 2)), (4, (1, 2, 3, 4)),
                                            (6, (1, 2))])
def test_viterbi_equals_brute_force_over_all_legal_paths(layers, widths):
    space = SearchSpace(layers=layers, widths=widths)
    gen = torch.Generator().manual_seed(layers * 10 + len(widths))
    for _ in range(25):
        beta = torch.randn(space.layers, space.levels, len(MOVES), generator=gen) * 2
        probs = transition_probs(beta, space.move_mask())
        best = max(legal_paths(space), key=lambda p: path_prob(space, probs, p))
        assert viterbi_path(space, probs) == best


def brute_force_cell(space, weights):
    nonzero = [o for o, n in enumerate(space.ops) if n != "zero"]
    cell = []
    for node in range(space.nodes):
        states = range(2 + node)
        best_pair = max(
            itertools.combinations(states, 2),
            key=lambda pair: sum(max(weights[space.edge_index(node, s), o] for o in nonzero) for s in pair),
        )
        cell.append(tuple((space.ops[max(nonzero, key=lambda o: weights[space.edge_index(node, s), o])], s) for s in best_pair))
    return tuple(cell)


@pytest.mark.parametrize("nodes", [1, 3, 4, 5])
def test_cell_derivation_equals_brute_force_top2_and_never_picks_zero(nodes):
    space = SearchSpace(nodes=nodes)
    gen = torch.Generator().manual_seed(nodes)
    for trial in range(30):
        logits = torch.randn(space.num_edges, len(space.ops), generator=gen) * 2
        if trial % 3 == 0:
            logits[:, space.ops.index("zero")] += 10  # zero dominates every edge
        weights = logits.softmax(-1)
        cell = derive_cell(space, weights)
        assert cell == brute_force_cell(space, weights)
        assert all(op != "zero" for node in cell for op, _ in node)


def test_derive_uses_the_alpha_of_the_level_each_layer_visits():
    space = SearchSpace(layers=2, nodes=2, sharing="independent")
    alpha = torch.zeros(2, 3, space.num_edges, len(space.ops))
    alpha[0, 1, :, space.ops.index("sep_conv_5x5")] = 5  # layer 1, level 1
    alpha[1, 2, :, space.ops.index("dil_conv_3x3")] = 5  # layer 2, level 2
    beta = torch.zeros(2, 3, 3)
    beta[:, :, 2] = 5  # always go wider
    g = derive(space, alpha.softmax(-1), transition_probs(beta, space.move_mask()))
    assert g.path == (1, 2)
    assert {op for node in g.cells[0] for op, _ in node} == {"sep_conv_5x5"}
    assert {op for node in g.cells[1] for op, _ in node} == {"dil_conv_3x3"}


def test_json_round_trip_is_exact(tmp_path):
    space = preset("paper-sr").replace(sharing="tied")
    g = Genotype(space, (1, 2), (((("sep_conv_3x3", 0), ("identity", 1)), (("conv_3x3", 1), ("dil_conv_5x5", 2)),
                                  (("sep_conv_5x5", 0), ("dil_conv_3x3", 3))),) * 2, meta={"epoch": 61})
    path = g.save(tmp_path / "genotype.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "hinas.genotype" and data["schema_version"] == SCHEMA_VERSION
    back = Genotype.load(path)
    assert back == g and back.meta == {"epoch": 61} and back.to_json() == g.to_json()


def valid_dict():
    return uniform_genotype(preset("paper-denoise"), "conv_3x3", (0, 1, 2)).to_dict()


def edit(fn):
    d = copy.deepcopy(valid_dict())
    fn(d)
    return json.dumps(d)


INVALID = [
    ("unknown op", edit(lambda d: d["cells"][1][2][0].update(op="conv_7x7")),
     "cells[1][2][0].op: 'conv_7x7' is not allowed; choose one of conv_3x3, sep_conv_3x3"),
    ("zero op", edit(lambda d: d["cells"][0][0][1].update(op="zero")), "cells[0][0][1].op: 'zero' is not allowed"),
    ("wrong number of nodes", edit(lambda d: d["cells"][2].pop()), "cells[2]: expected 4 nodes (space.nodes), got 3"),
    ("three inputs", edit(lambda d: d["cells"][0][1].append({"op": "identity", "input": 0})), "exactly 2 incoming edges, got 3"),
    ("input out of range", edit(lambda d: d["cells"][0][1][1].update(input=3)),
     "cells[0][1][1].input: state 3 is out of range; node 1 reads states 0..2"),
    ("negative input", edit(lambda d: d["cells"][0][0][0].update(input=-1)), "cells[0][0][0].input: state -1 is out of range"),
    ("path jumps two levels", edit(lambda d: d.update(path=[0, 2, 2])), "path[1]: level 2 after level 0 jumps two levels"),
    ("path starts off level 0", edit(lambda d: d.update(path=[2, 2, 2])), "path[0]: level 2 after level 0 starts off level 0"),
    ("path too short", edit(lambda d: d.update(path=[0, 1])), "path: expected 3 levels (space.layers), got 2"),
    ("level does not exist", edit(lambda d: d.update(path=[0, 1, 3])), "path[2]: level 3 does not exist; levels are 0..2"),
    ("newer schema", edit(lambda d: d.update(schema_version=SCHEMA_VERSION + 1)),
     f"schema_version: {SCHEMA_VERSION + 1} is newer than this hinas reads (up to {SCHEMA_VERSION})"),
    ("not a genotype", edit(lambda d: d.update(schema="darts.genotype")), "schema: 'darts.genotype' is not a hinas genotype"),
    ("bad space", edit(lambda d: d["space"].update(nodes=0)), "space.nodes: must be at least 1"),
    ("unknown field", edit(lambda d: d.update(extra=1)), "unknown field(s) 'extra'"),
    ("missing field", edit(lambda d: d.pop("path")), "missing field(s) 'path'"),
    ("string where index", edit(lambda d: d["cells"][0][0][0].update(input="1")), "expected an integer state index, got '1'"),
    ("malformed JSON", '{"schema": "hinas.genotype", "path": [0, 1,', "not valid JSON"),
    ("not an object", "[1, 2, 3]", "a genotype must be a JSON object, got list"),
]


@pytest.mark.parametrize("what, text, message", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_genotype_files_are_rejected_with_a_message_naming_the_field(tmp_path, what, text, message):
    path = tmp_path / "genotype.json"
    path.write_text(text)
    with pytest.raises(GenotypeError) as err:
        Genotype.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_probabilities_of_the_chosen_path_are_maximal_in_log_space_too():
    """Viterbi works in log space: a long path of small probabilities must not underflow to a tie."""
    space = SearchSpace(layers=60, widths=(1, 2))
    beta = torch.full((60, 2, 3), -30.0)
    beta[:, :, 1] = -29.0  # 'same' is always slightly better
    probs = transition_probs(beta, space.move_mask())
    assert math.prod(float(probs[layer, 0, 1]) for layer in range(60)) > 0
    assert viterbi_path(space, probs) == (0,) * 60

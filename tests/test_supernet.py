import pytest
import torch
from conftest import small_space
from torch import nn

from hinas.nas.genotype import Genotype, derive_cell
from hinas.nas.network import Cell
from hinas.nas.space import SearchSpace, preset
from hinas.nas.supercell import StackedCell
from hinas.nas.supernet import ReferenceCell, SearchCell, Supernet


def test_architecture_and_weights_are_separate_parameter_groups():
    net = Supernet(small_space())
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert net.alpha.shape == (3, 1, 9, 7) and net.beta.shape == (3, 3, 3)


@pytest.mark.parametrize("sharing, shape", [("lwas", (3, 1)), ("tied", (1, 1)), ("independent", (3, 3))])
def test_alpha_shape_follows_sharing(sharing, shape):
    assert Supernet(small_space(sharing=sharing)).alpha.shape[:2] == shape


def test_initial_architecture_weights_are_equal():
    net = Supernet(small_space())
    torch.testing.assert_close(net.alpha_probs(), torch.full_like(net.alpha, 1 / 7))
    probs = net.beta_probs()
    assert torch.allclose(probs[0, 0], torch.tensor([0, 0.5, 0.5]))  # stem: same or wider
    assert torch.allclose(probs[1, 1], torch.full((3,), 1 / 3))
    assert torch.allclose(probs[2, 2], torch.tensor([0.5, 0.5, 0]))  # widest: narrower or same


@pytest.mark.parametrize("sharing", ["lwas", "tied", "independent"])
@pytest.mark.parametrize("cell_eval", ["shared", "per_transition"])
def test_gradients_reach_every_influential_alpha_and_beta_and_no_masked_move(sharing, cell_eval):
    space = small_space(sharing=sharing, cell_eval=cell_eval)
    net = Supernet(space)
    with torch.no_grad():  # away from the symmetric start, so no gradient vanishes by symmetry
        net.alpha.normal_(0, 0.5)
        net.beta.normal_(0, 0.5)
    loss = net(torch.rand(2, 1, 12, 12)).square().mean()
    loss.backward()
    mask = space.move_mask()
    assert torch.all(net.beta.grad[~mask] == 0)
    assert torch.all(net.beta.grad[mask] != 0)
    if sharing == "independent":
        for layer in range(space.layers):
            for k in range(space.levels):
                exists = k in space.layer_levels(layer + 1)
                assert bool(torch.all(net.alpha.grad[layer, k] != 0)) == exists, (layer, k)
    else:
        assert torch.all(net.alpha.grad != 0)


def count_cell_calls(net: Supernet, x: torch.Tensor) -> int:
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in net.modules() if isinstance(m, SearchCell)]
    net(x)
    for h in hooks:
        h.remove()
    return len(calls)


def test_shared_evaluates_one_cell_per_layer_and_level_per_transition_one_per_arrival():
    # Paper trellis L=3, K=3: cells per layer 2 + 3 + 3 = 8; arrivals per layer 2 + 5 + 7 = 14.
    x = torch.rand(1, 1, 8, 8)
    assert count_cell_calls(Supernet(small_space(cell_eval="shared")), x) == 8
    assert count_cell_calls(Supernet(small_space(cell_eval="per_transition")), x) == 14


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_discretised_supernet_cell_equals_the_derived_cell(impl):
    """One-hot alphas (zero op on dropped edges) make a search cell compute exactly its derived cell."""
    space = small_space(nodes=4)
    torch.manual_seed(1)
    raw = torch.randn(space.num_edges, len(space.ops)).softmax(-1)
    genotype = derive_cell(space, raw)
    one_hot = torch.zeros_like(raw)
    one_hot[:, space.ops.index("zero")] = 1
    for node, edges in enumerate(genotype):
        for op, state in edges:
            e = space.edge_index(node, state)
            one_hot[e] = 0
            one_hot[e, space.ops.index(op)] = 1
    search, derived = ReferenceCell(space, 6), Cell(genotype, 6)
    for node, edges in enumerate(genotype):
        for slot, (op, state) in enumerate(edges):
            source = search.edges[space.edge_index(node, state)].ops[space.ops.index(op)]
            missing, unexpected = derived.nodes[node][slot].load_state_dict(source.state_dict(), strict=False)
            assert not unexpected and all(k.endswith(("weight", "bias")) for k in missing)  # only BN's affine pair
    if impl == "fused":
        fused = StackedCell(space, 6)
        fused.load_reference_state(search.state_dict())
        search = fused
    s0, s1 = torch.randn(2, 6, 9, 9), torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(search(s0, s1, one_hot), derived(s0, s1))


def test_cpu_bf16_autocast_forward_and_backward():
    net = Supernet(small_space())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.rand(2, 1, 12, 12))
    y.float().mean().backward()
    assert net.alpha.grad is not None and torch.isfinite(net.alpha.grad).all()


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_sr_supernet_output_shape(scale):
    net = Supernet(SearchSpace(task="sr", in_channels=3, scale=scale, layers=2, nodes=2, filters=4))
    assert net(torch.rand(1, 3, 7, 9)).shape == (1, 3, 7 * scale, 9 * scale)


def test_paper_supernet_builds_and_derives_a_valid_genotype():
    net = Supernet(preset("paper-denoise"))
    with torch.no_grad():
        net.alpha.normal_()
        net.beta.normal_()
    g = net.genotype()
    assert isinstance(g, Genotype) and len(g.cells) == 3 and g.path[0] in (0, 1)


def test_a_user_registered_operation_can_be_searched_and_derived():
    from hinas.nas.network import Network
    from hinas.nas.ops import act_conv_bn, register_op, unregister_op

    register_op("conv_1x1", lambda c, affine: act_conv_bn(c, c, 1, affine=affine))
    try:
        space = small_space(ops=("conv_1x1", "identity", "zero"))
        net = Supernet(space)
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05)
        a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.05)
        x = torch.rand(4, 1, 12, 12)
        target = x.flip(-1)  # not reachable by identity alone: the 1x1 convs must do work
        for _ in range(5):
            for opt in (a_opt, w_opt):
                opt.zero_grad()
                nn.functional.mse_loss(net(x), target).backward()
                opt.step()
        assert not torch.equal(net.alpha, torch.zeros_like(net.alpha))
        with torch.no_grad():
            net.alpha[..., 0] += 5  # make the new op the clear winner
        g = net.genotype()
        assert g.op_counts() == {"conv_1x1": 2 * space.nodes * space.layers}
        restored = Genotype.from_json(g.to_json())
        assert Network(restored, filters=6)(x).shape == x.shape
    finally:
        unregister_op("conv_1x1")

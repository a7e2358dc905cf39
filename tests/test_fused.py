"""The fused supernet cell against the plain reference cell: same outputs, gradients, statistics and search."""

import pytest
import torch
from torch import nn

from conftest import small_space
from hinas.cells import ReferenceCell
from hinas.fused import FusedCell
from hinas.ops import act_conv_bn, register_op, unregister_op
from hinas.space import preset
from hinas.supernet import Supernet

GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def pair(space, **kw) -> tuple[Supernet, Supernet]:
    """A reference and a fused supernet with the same weights and random (unequal) alphas and betas."""
    ref = Supernet(space, impl="reference", **kw)
    with torch.no_grad():
        ref.alpha.normal_(0, 0.5)
        ref.beta.normal_(0, 0.5)
    fused = Supernet(space, **kw)
    fused.load_reference_state(ref.state_dict())
    return ref, fused


def grads(net: Supernet) -> dict[str, torch.Tensor]:
    """Parameter gradients under the reference layout's names."""
    return net.reference_state({n: p.grad for n, p in net.named_parameters()})


def test_a_seed_gives_the_same_initial_supernet_in_both_implementations():
    space = small_space()
    torch.manual_seed(3)
    ref = Supernet(space, impl="reference")
    after_ref = torch.rand(3)
    torch.manual_seed(3)
    fused = Supernet(space)
    torch.testing.assert_close(fused.reference_state(), ref.state_dict(), rtol=0, atol=0)
    assert torch.equal(torch.rand(3), after_ref)  # construction draws the same numbers, so a seeded run continues alike


def test_reference_state_round_trips_through_the_fused_layout():
    ref, fused = pair(small_space(nodes=4))
    back = Supernet(small_space(nodes=4), impl="reference")
    back.load_reference_state(fused.reference_state())
    torch.testing.assert_close(back.state_dict(), ref.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("nodes", [1, 2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_fused_cell_matches_the_reference_cell(nodes, training):
    """Outputs, gradients for inputs, weights and alpha weights, and BN running statistics."""
    space = small_space(nodes=nodes)
    ref = ReferenceCell(space, 5)
    for p in ref.parameters():  # away from the default init, so every kernel matters
        p.data.normal_()
    fused = FusedCell(space, 5)
    fused.load_reference_state(ref.state_dict())
    s0, s1 = torch.randn(3, 5, 9, 7), torch.randn(3, 5, 9, 7)
    if not training:
        for cell in (ref, fused):
            cell(s0, s1, torch.rand(space.num_edges, len(space.ops)))  # move the running statistics first
            cell.eval()
    w = torch.randn(space.num_edges, len(space.ops)).softmax(-1)
    outs, input_grads = [], []
    for cell in (ref, fused):
        inputs = [t.clone().requires_grad_() for t in (s0, s1, w)]
        out = cell(*inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
        input_grads.append([t.grad for t in inputs])
    torch.testing.assert_close(outs[1], outs[0])
    for g_fused, g_ref in zip(input_grads[1], input_grads[0]):
        torch.testing.assert_close(g_fused, g_ref, **GRAD_TOL)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    torch.testing.assert_close(fused.reference_state({n: p.grad for n, p in fused.named_parameters()}), ref_grads, **GRAD_TOL)
    torch.testing.assert_close(fused.reference_state(), ref.state_dict())


@pytest.mark.parametrize("sharing", ["lwas", "tied", "independent"])
@pytest.mark.parametrize("cell_eval", ["shared", "per_transition"])
def test_fused_supernet_matches_the_reference_supernet(sharing, cell_eval):
    """Outputs and gradients for every weight, alpha and beta; running statistics after the step."""
    ref, fused = pair(small_space(sharing=sharing, cell_eval=cell_eval))
    x = torch.rand(3, 1, 12, 12)
    outs = []
    for net in (ref, fused):
        out = net(x)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(grads(fused), grads(ref), **GRAD_TOL)
    torch.testing.assert_close(fused.reference_state(), ref.state_dict())


def test_paper_denoising_supernet_matches_the_reference():
    """The authors' space (L=3, B=4, F=10, all seven ops) on a small batch."""
    ref, fused = pair(preset("paper-denoise"))
    x = torch.rand(2, 1, 16, 16)
    for net in (ref, fused):
        net(x).square().mean().backward()
    torch.testing.assert_close(fused(x), ref(x))
    torch.testing.assert_close(grads(fused), grads(ref), **GRAD_TOL)


def test_search_steps_reach_the_same_architecture_in_both_implementations():
    """The search's alternating first-order steps (Adam on alphas/betas, SGD on weights) from the same start."""
    space = small_space(nodes=4)
    nets = pair(space)
    start = nets[0].alpha.detach().clone()
    x, target = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    for net in nets:
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.01, weight_decay=1e-3)
        for step in range(4):
            for opt in (a_opt, w_opt):
                opt.zero_grad()
                nn.functional.mse_loss(net(x), target).backward()
                opt.step()
    ref, fused = nets
    assert not torch.allclose(ref.alpha, start, atol=1e-3)  # the architecture did move
    torch.testing.assert_close(fused.alpha, ref.alpha, **GRAD_TOL)
    torch.testing.assert_close(fused.beta, ref.beta, **GRAD_TOL)
    assert fused.genotype() == ref.genotype()


def test_checkpointed_cells_give_the_same_step_and_count_running_statistics_once():
    space = small_space(nodes=3)
    plain, _ = pair(space)
    for impl in ("fused", "reference"):
        ckpt = Supernet(space, impl=impl, checkpoint=True)
        ckpt.load_reference_state(plain.state_dict())
        base = Supernet(space, impl=impl)
        base.load_reference_state(plain.state_dict())
        x = torch.rand(3, 1, 12, 12)
        outs = []
        for net in (base, ckpt):
            out = net(x)
            out.square().mean().backward()
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0])
        torch.testing.assert_close(grads(ckpt), grads(base), **GRAD_TOL)
        torch.testing.assert_close(ckpt.reference_state(), base.reference_state())  # incl. num_batches_tracked


def test_an_op_without_stacking_runs_edge_by_edge_and_matches():
    register_op("conv_1x1", lambda c, affine: act_conv_bn(c, c, 1, affine=affine))
    try:
        space = small_space(ops=("conv_1x1", "sep_conv_3x3", "identity", "zero"))
        ref, fused = pair(space)
        x = torch.rand(2, 1, 12, 12)
        for net in (ref, fused):
            net(x).square().mean().backward()
        torch.testing.assert_close(fused(x), ref(x))
        torch.testing.assert_close(grads(fused), grads(ref), **GRAD_TOL)
    finally:
        unregister_op("conv_1x1")


def test_an_unknown_implementation_is_refused():
    from hinas.errors import ConfigError

    with pytest.raises(ConfigError, match="fused, reference"):
        Supernet(small_space(), impl="fast")

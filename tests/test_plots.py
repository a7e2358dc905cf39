import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from hinas.nas.space import preset  # noqa: E402
from hinas.nas.supernet import Supernet  # noqa: E402
from hinas.viz import plots  # noqa: E402


def fake_history(space, epochs=4):
    net = Supernet(space)
    out = []
    for e in range(1, epochs + 1):
        with torch.no_grad():
            net.alpha.add_(torch.randn_like(net.alpha) * 0.1)
            net.beta.add_(torch.randn_like(net.beta) * 0.1)
        out.append({"epoch": e, "weight_loss": 1 / e, "arch_loss": None if e < 2 else 1.2 / e, "val_psnr": 20 + e,
                    "input_psnr": 20, "skip_ops": e % 3, "zero_edges": e % 2, "alpha": net.alpha_probs().tolist(),
                    "beta": net.beta_probs().tolist()})
    return out


def test_heatmaps_have_one_panel_per_alpha_and_per_source_layer():
    net = Supernet(preset("paper-denoise"))
    fig = plots.plot_alphas(net.space, net.alpha_probs())
    assert len([a for a in fig.axes if a.get_title().startswith("layer")]) == 3
    fig = plots.plot_betas(net.space, net.beta_probs(), (0, 1, 2))
    assert [a.get_title() for a in fig.axes[:3]] == ["stem", "from layer 1", "from layer 2"]


def test_history_plots_draw_every_epoch_and_every_legal_move():
    space = preset("paper-denoise")
    history = fake_history(space)
    fig = plots.plot_search_history(history, best_epoch=3)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and list(lines[1].get_xdata()) == [2, 3, 4]  # arch loss starts after warm-up
    fig = plots.plot_alpha_evolution(history, space)
    assert all(len(ax.get_lines()) == len(space.ops) for ax in fig.axes)
    fig = plots.plot_beta_evolution(history, space)
    assert [len(ax.get_lines()) for ax in fig.axes] == [len(space.legal_moves(layer)) for layer in range(space.layers)]
    fig = plots.plot_collapse(history)
    assert len(fig.axes[0].patches) == 2 * len(history)


def test_comparison_shows_crops_and_error_maps_for_sr_inputs_too():
    target = torch.rand(3, 64, 64)
    rows = [("a", torch.rand(3, 32, 32), target * 0.9, target), ("b", torch.rand(3, 64, 64), target, target)]
    fig = plots.plot_comparison(rows, crop=40)
    assert len(fig.axes) == 10 + 2  # five panels per row and each row's error colour bar
    assert [a.get_ylabel() for a in fig.axes[10:]] == ["absolute error (0-1)"] * 2
    error_after = fig.axes[9].get_images()[0].get_array()
    assert float(abs(error_after).max()) == 0  # row b restores exactly

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import uniform_genotype

from hinas.infer.export import export_onnx
from hinas.nas.network import Network
from hinas.nas.space import SearchSpace, preset


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["restored"], {"degraded": x.numpy()})[0]


def trained_like(net: Network) -> Network:
    """Non-trivial BatchNorm statistics, so the export is checked with eval-mode normalisation that matters."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, net.genotype.space.in_channels, 24, 24))
    return net.eval()


def test_denoiser_onnx_matches_pytorch_at_any_size(tmp_path):
    net = trained_like(Network(uniform_genotype(preset("paper-denoise"), "sep_conv_3x3", (0, 1, 2)), filters=8))
    path = export_onnx(net, tmp_path / "denoise.onnx")
    for shape in [(1, 1, 64, 64), (2, 1, 37, 50)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = net(x).numpy()
        np.testing.assert_allclose(run_onnx(path, x), expected, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_onnx_matches_pytorch_at_the_exported_size(tmp_path, scale):
    space = SearchSpace(task="sr", in_channels=3, scale=scale, layers=2, nodes=3, filters=8)
    net = trained_like(Network(uniform_genotype(space, "conv_3x3", (1, 2)), filters=8))
    path = export_onnx(net, tmp_path / "sr.onnx", size=(20, 28))
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        expected = net(x).numpy()
    out = run_onnx(path, x)
    assert out.shape == (2, 3, 20 * scale, 28 * scale)
    np.testing.assert_allclose(out, expected, atol=1e-5)

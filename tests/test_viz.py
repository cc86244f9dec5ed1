"""rconv.viz: the pictures are written, are PNG files and have one Axes per panel."""

import sys

import numpy as np
import pytest

from rconv import nn
from rconv.datasets import load_mnist_5k
from rconv.models import lenet5

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(not _have_matplotlib(), reason='needs matplotlib: pip install "rconv[viz]"')


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


@pytest.fixture(scope="module")
def digit():
    _, (x_test, _) = load_mnist_5k()
    return x_test[0]  # (1, 28, 28)


@needs_matplotlib
def test_plot_filters_of_a_layer_model_and_array(tmp_path):
    from rconv import viz

    model = lenet5(rng=np.random.default_rng(0))
    path = tmp_path / "filters.png"
    fig = viz.plot_filters(model[0], path)
    assert is_png(path)
    assert len(fig.axes) == 6  # one panel per output channel
    fig = viz.plot_filters(model, tmp_path / "sub" / "from_model.png")  # the first conv layer
    assert len(fig.axes) == 6 and is_png(tmp_path / "sub" / "from_model.png")
    fig = viz.plot_filters(model[3].weight.data, reduce="first", path=tmp_path / "c2.png")  # (16, 6, 5, 5)
    assert len(fig.axes) == 16 and is_png(tmp_path / "c2.png")
    fig = viz.plot_filters(model[3], tmp_path / "c2mean.png")
    assert len(fig.axes) == 16
    fig = viz.plot_filters(nn.Conv1d(2, 5, 7), tmp_path / "c1d.png")  # 1D kernels as one-row images
    assert len(fig.axes) == 5
    # the panels show the filters: the first panel's image is filter 0
    np.testing.assert_allclose(np.asarray(viz.plot_filters(model[0], tmp_path / "x.png").axes[0].images[0].get_array()),
                               model[0].weight.data[0, 0], rtol=1e-6)


@needs_matplotlib
def test_plot_filters_without_path_returns_pyplot_figure():
    import matplotlib.pyplot as plt

    from rconv import viz

    fig = viz.plot_filters(nn.Conv2d(1, 3, 3))
    try:
        assert len(fig.axes) == 3
        assert plt.fignum_exists(fig.number)
    finally:
        plt.close(fig)


@needs_matplotlib
def test_plot_feature_maps(tmp_path, digit):
    from rconv import viz

    model = lenet5(rng=np.random.default_rng(0))
    path = tmp_path / "maps.png"
    fig = viz.plot_feature_maps(model, digit, path)
    assert is_png(path)
    assert len(fig.axes) == 6 + 16  # row 1: conv 0's 6 channels, row 2: conv 3's 16
    assert model.training  # mode restored
    first = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(first, model[0](digit[None])[0, 0], rtol=1e-5, atol=1e-6)
    # (1, C, H, W) and (H, W) inputs too; nested Sequential
    assert len(viz.plot_feature_maps(model, digit[None], tmp_path / "a.png").axes) == 22
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU()), nn.Conv2d(3, 2, 3))
    assert len(viz.plot_feature_maps(nested, digit[0], tmp_path / "b.png").axes) == 5


@needs_matplotlib
def test_viz_bad_arguments(tmp_path, digit):
    from rconv import viz

    with pytest.raises(ValueError, match="reduce"):
        viz.plot_filters(nn.Conv2d(1, 2, 3), reduce="max")
    with pytest.raises(ValueError, match="weight_or_layer"):
        viz.plot_filters(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no convolution layer"):
        viz.plot_filters(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no Conv2d"):
        viz.plot_feature_maps(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), digit, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one image"):
        viz.plot_feature_maps(lenet5(), np.zeros((2, 1, 28, 28), np.float32), tmp_path / "x.png")
    with pytest.raises(TypeError, match="model"):
        viz.plot_feature_maps("lenet", digit)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    from rconv import viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r'pip install "rconv\[viz\]"'):
        viz.plot_filters(nn.Conv2d(1, 2, 3), "never.png")

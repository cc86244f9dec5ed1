"""Pictures of learned filters and feature maps (needs matplotlib: ``pip install "rconv[viz]"``).

Both functions return a ``matplotlib.figure.Figure`` with one Axes per panel.

- With ``path``, the figure is drawn with the Agg backend and written as PNG; it is not
  registered with ``matplotlib.pyplot``, so no window opens, no display is needed and nothing
  accumulates when called in a loop.
- Without ``path``, the figure is made with ``matplotlib.pyplot.figure`` so that
  ``plt.show()`` or a notebook displays it.

This module is not imported by ``import rconv``; import it as ``import rconv.viz``.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Tuple

import numpy as np

from ._args import check_path

__all__ = ["plot_filters", "plot_feature_maps"]

_INSTALL_HINT = 'rconv.viz needs matplotlib: pip install "rconv[viz]"'


def _new_figure(figsize: Tuple[float, float], path) -> Any:
    try:
        import matplotlib  # noqa: F401  (only to find out whether it is installed)
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        return fig
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def _check_plot_args(path, cmap) -> Optional[str]:
    """``path`` (None or a file path) as a str, and ``cmap`` (None, a name or a Colormap), checked
    before anything is drawn, each error naming its argument."""
    if cmap is not None and not isinstance(cmap, str):
        try:
            from matplotlib.colors import Colormap
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        if not isinstance(cmap, Colormap):
            raise TypeError(f"cmap must be a colour map name, a matplotlib Colormap or None, got {type(cmap).__name__}")
    return None if path is None else check_path("path", path)


def _save(fig, path) -> None:
    if path is None:
        return
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def _panel(ax, image: np.ndarray, title: Optional[str], cmap: str, vmin: float, vmax: float) -> None:
    ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _weight_of(weight_or_layer: Any) -> np.ndarray:
    from . import nn

    obj = weight_or_layer
    if isinstance(obj, nn.Module) and not isinstance(obj, nn._ConvNd):
        convs = [m for m in obj.modules() if isinstance(m, nn._ConvNd)]
        if not convs:
            raise ValueError(f"plot_filters: {type(obj).__name__} has no convolution layer")
        obj = convs[0]
    if isinstance(obj, nn._ConvNd):
        obj = obj.weight
    if isinstance(obj, nn.Parameter):
        obj = obj.data
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        obj = obj.detach().cpu().numpy()
    w = np.asarray(obj)
    if not np.issubdtype(w.dtype, np.number) or w.ndim not in (3, 4):
        raise ValueError(
            "plot_filters: weight_or_layer must be a Conv1d/Conv2d layer, a model containing one, "
            f"or a weight array (K, C, kh, kw) or (K, C, k); got shape {w.shape}"
        )
    if w.ndim == 3:  # 1D kernels drawn as one-row images
        w = w[:, :, None, :]
    return w.astype(np.float64)


def plot_filters(weight_or_layer: Any, path=None, *, reduce: str = "mean", cmap: str = "RdBu_r"):
    """Draw each output channel's filter as a small image, on one shared colour scale.

    Parameters
    ----------
    weight_or_layer : Conv2d, Conv1d, model, Parameter or numpy.ndarray
        A convolution layer, a model (its first convolution layer is drawn) or a weight of
        shape (K, C, kh, kw) (or (K, C, k) for 1D kernels).
    path : str or path-like, optional
        Write the figure here as PNG (folders are created).
    reduce : {"mean", "first"}
        With more than one input channel, draw the mean over the input channels or the first
        input channel of each filter.
    cmap : str
        A diverging colour map, centred on zero (default red positive, blue negative).

    Returns
    -------
    matplotlib.figure.Figure
        K panels (one Axes each) in a near-square grid.
    """
    path = _check_plot_args(path, cmap)
    if reduce not in ("mean", "first"):
        raise ValueError(f"reduce must be 'mean' or 'first', got {reduce!r}")
    w = _weight_of(weight_or_layer)
    k, c = w.shape[:2]
    images = w[:, 0] if (c == 1 or reduce == "first") else w.mean(axis=1)  # (K, kh, kw)
    top = float(np.abs(images).max()) or 1.0
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    fig = _new_figure((1.2 * cols + 0.4, 1.3 * rows + 0.5), path)
    what = "" if c == 1 else (" (mean over input channels)" if reduce == "mean" else " (input channel 0)")
    fig.suptitle(f"{k} filters {tuple(w.shape[2:]) if w.shape[2] > 1 else (w.shape[3],)}{what}", fontsize=10)
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        _panel(ax, images[i], f"{i}", cmap, -top, top)
    _save(fig, path)
    return fig


def _as_single_input(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 2:  # (H, W)
        x = x[None, None]
    elif x.ndim == 3:  # (C, H, W)
        x = x[None]
    elif x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image, (H, W), (C, H, W) or (1, C, H, W); got shape {x.shape}")
    return x


def plot_feature_maps(model: Any, x: np.ndarray, path=None, *, cmap: str = "viridis"):
    """Run one input through ``model`` and draw every convolution layer's output channels.

    Parameters
    ----------
    model : Sequential (nested Sequentials are walked) or a single Conv2d
        Run in evaluation mode; its mode is restored afterwards.
    x : numpy.ndarray
        One image: (H, W), (C, H, W) or (1, C, H, W), in the model's dtype.
    path : str or path-like, optional
        Write the figure here as PNG.
    cmap : str
        Colour map; each panel is scaled to its own range.

    Returns
    -------
    matplotlib.figure.Figure
        One row per Conv2d layer (in model order), one panel (Axes) per output channel of
        that layer: ``sum(out_channels)`` panels in all.
    """
    from . import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an rconv.nn.Module, got {type(model).__name__}")
    path = _check_plot_args(path, cmap)
    x = _as_single_input(x)

    def leaves(m: nn.Module) -> List[Tuple[str, nn.Module]]:
        if isinstance(m, nn.Sequential):
            out = []
            for name, child in m.named_children():
                out += [(f"{name}.{n}" if n else name, c) for n, c in leaves(child)]
            return out
        if m._modules:
            raise TypeError(
                f"plot_feature_maps walks Sequential models; {type(m).__name__} has submodules it cannot order"
            )
        return [("", m)]

    layers = leaves(model)
    if not any(isinstance(m, nn.Conv2d) for _, m in layers):
        raise ValueError("plot_feature_maps: the model has no Conv2d layer")

    maps: List[Tuple[str, np.ndarray]] = []
    was_training = model.training
    model.eval()
    try:
        h = x
        for name, layer in layers:
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                maps.append((f"{name} {type(layer).__name__}".strip(), np.asarray(h[0], dtype=np.float64)))
    finally:
        model.train(was_training)

    cols = max(m.shape[0] for _, m in maps)
    rows = len(maps)
    fig = _new_figure((0.9 * cols + 0.8, 1.1 * rows + 0.5), path)
    fig.suptitle("feature maps (one row per convolution layer, one panel per output channel)", fontsize=10)
    for r, (label, fmap) in enumerate(maps):
        for c in range(fmap.shape[0]):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            lo, hi = float(fmap[c].min()), float(fmap[c].max())
            _panel(ax, fmap[c], str(c), cmap, lo, hi if hi > lo else lo + 1.0)
            if c == 0:
                ax.set_ylabel(f"{label}\n{fmap.shape[1]}x{fmap.shape[2]}", fontsize=8)
    _save(fig, path)
    return fig

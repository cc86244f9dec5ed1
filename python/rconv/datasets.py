"""Small data sets shipped inside the rconv package.

The only one so far is a 5,000-digit subset of MNIST (see ``rconv/data/README.md`` for its
provenance). It is small enough to ship in the wheel and large enough to train a LeNet-style
network to a meaningful accuracy in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

__all__ = ["load_mnist_5k", "DATA_DIR"]

#: Folder holding the shipped data files.
DATA_DIR = Path(__file__).resolve().parent / "data"

_MNIST_5K = "mnist_5k.npz"
_N_CLASSES = 10
_PER_CLASS = 500
_TRAIN_PER_CLASS = 400

Split = Tuple[np.ndarray, np.ndarray]


def load_mnist_5k() -> Tuple[Split, Split]:
    """Load the shipped 5,000-digit MNIST subset, split into train and test.

    The file holds 500 digits of each class, sorted by class. Per class, the first 400
    digits form the training set and the last 100 the test set, so both sets are balanced
    and sorted by class (shuffle before training in mini-batches).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        ``x_*`` are float32 images scaled to [0, 1] (white digit on black); ``y_*`` are
        int64 class labels in ``0..9``.

    Shape
    -----
    - x_train: (4000, 1, 28, 28), y_train: (4000,)
    - x_test: (1000, 1, 28, 28), y_test: (1000,)

    Examples
    --------
    >>> from rconv.datasets import load_mnist_5k
    >>> (x_train, y_train), (x_test, y_test) = load_mnist_5k()
    >>> x_train.shape, x_train.dtype, y_test.shape, y_test.dtype
    ((4000, 1, 28, 28), dtype('float32'), (1000,), dtype('int64'))
    """
    with np.load(DATA_DIR / _MNIST_5K) as data:
        images = data["images"]
        labels = data["labels"]

    if images.shape != (_N_CLASSES * _PER_CLASS, 28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(
            f"{_MNIST_5K}: unexpected shapes images {images.shape}, labels {labels.shape}"
        )

    counts = np.bincount(labels, minlength=_N_CLASSES)
    if counts.shape != (_N_CLASSES,) or (counts != _PER_CLASS).any():
        raise ValueError(f"{_MNIST_5K}: expected {_PER_CLASS} digits per class, got {counts}")
    # The file is sorted by class; group by label anyway (stable, so the order within a class
    # is the file's) so the split does not silently depend on that order.
    by_class = np.argsort(labels, kind="stable").reshape(_N_CLASSES, _PER_CLASS)
    train = by_class[:, :_TRAIN_PER_CLASS].ravel()
    test = by_class[:, _TRAIN_PER_CLASS:].ravel()

    def split(idx: np.ndarray) -> Split:
        x = (images[idx].astype(np.float32) / np.float32(255.0))[:, None, :, :]
        y = labels[idx].astype(np.int64)
        return np.ascontiguousarray(x), y

    return split(train), split(test)

"""Ready-made models built from :mod:`rconv.nn` layers."""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import nn
from ._args import check_array_size, check_dtype, check_int

__all__ = ["lenet5"]


def lenet5(num_classes: int = 10, *, dtype=np.float32, rng: Optional[np.random.Generator] = None) -> nn.Sequential:
    """LeNet-5 for 28x28 single-channel images (the benchmark suite's model), as in PyTorch:

    ``Conv2d(1, 6, 5, padding=2) ReLU MaxPool2d(2) Conv2d(6, 16, 5) ReLU MaxPool2d(2) Flatten
    Linear(400, 120) ReLU Linear(120, 84) ReLU Linear(84, num_classes)``

    61,706 parameters with 10 classes; ``state_dict`` keys "0.weight", "0.bias", "3.*", "7.*",
    "9.*", "11.*". The initial weights come from ``rng`` (default:
    ``rconv.nn.default_generator()``, reset by ``rconv.nn.manual_seed``).

    Shape
    -----
    input (N, 1, 28, 28) -> logits (N, num_classes)
    """
    num_classes = check_int("num_classes", num_classes, 1)
    check_array_size("num_classes", (num_classes, 84), check_dtype("dtype", dtype))
    kw = dict(dtype=dtype, rng=rng)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120, **kw),
        nn.ReLU(),
        nn.Linear(120, 84, **kw),
        nn.ReLU(),
        nn.Linear(84, num_classes, **kw),
    )

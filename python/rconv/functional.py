"""NumPy-in, NumPy-out operations with the signatures and semantics of ``torch.nn.functional``.

Arrays are channels-first: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; convolution
weights are ``(out_channels, in_channels / groups, *kernel)``. float32 and float64 are each
computed in their own precision. Every function releases the GIL while it computes.
"""

from ._rconv import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    conv1d,
    conv2d,
    conv3d,
    cross_entropy,
    linear,
    log_softmax,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    relu,
    softmax,
)

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "relu",
    "linear",
    "softmax",
    "log_softmax",
    "cross_entropy",
]

"""NumPy-in, NumPy-out operations with the signatures and semantics of ``torch.nn.functional``.

Arrays are channels-first: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; convolution
weights are ``(out_channels, in_channels / groups, *kernel)``. float32 and float64 are each
computed in their own precision. Every function releases the GIL while it computes.

Each differentiable operation ``op`` has an ``op_backward`` taking the gradient of the output
first, then the forward's arguments, and returning the gradients of the forward's arrays.
"""

from ._rconv import (
    adaptive_avg_pool1d,
    adaptive_avg_pool1d_backward,
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool3d,
    adaptive_avg_pool3d_backward,
    avg_pool1d,
    avg_pool1d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    avg_pool3d,
    avg_pool3d_backward,
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
    conv3d,
    conv3d_backward,
    cross_entropy,
    cross_entropy_backward,
    linear,
    linear_backward,
    log_softmax,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_pool3d,
    max_pool3d_backward,
    relu,
    relu_backward,
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
    # backward
    "conv1d_backward",
    "conv2d_backward",
    "conv3d_backward",
    "max_pool1d_backward",
    "max_pool2d_backward",
    "max_pool3d_backward",
    "avg_pool1d_backward",
    "avg_pool2d_backward",
    "avg_pool3d_backward",
    "adaptive_avg_pool1d_backward",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d_backward",
    "relu_backward",
    "linear_backward",
    "cross_entropy_backward",
]

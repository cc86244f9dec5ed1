"""Hand-designed 2D kernels, to apply as fixed convolution filters.

A convolutional network learns its filters from data; these are the classic ones it is often
compared with. They are laid out for :func:`rconv.conv2d`, which (like PyTorch) computes a
cross-correlation: the kernel is not flipped.

The constants are read-only float32 arrays of shape (3, 3); :func:`as_weight` stacks any
number of 2D kernels into a conv2d weight.

Examples
--------
>>> import numpy as np, rconv
>>> from rconv import filters
>>> image = np.random.rand(1, 1, 28, 28).astype(np.float32)      # (N, C, H, W)
>>> weight = filters.as_weight(filters.sobel_x, filters.sobel_y)  # (2, 1, 3, 3)
>>> rconv.conv2d(image, weight, padding="same").shape
(1, 2, 28, 28)
"""

from __future__ import annotations

import numpy as np

from ._args import check_array_size, check_dtype, check_float, check_int

__all__ = ["sobel_x", "sobel_y", "laplacian", "gaussian", "as_weight"]


def _constant(rows) -> np.ndarray:
    array = np.array(rows, dtype=np.float32)
    array.setflags(write=False)
    return array


#: Sobel kernel for the horizontal derivative d/dx: responds to vertical edges, positive
#: where the image gets brighter from left to right. Shape (3, 3), float32.
sobel_x = _constant([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

#: Sobel kernel for the vertical derivative d/dy: responds to horizontal edges, positive
#: where the image gets brighter from top to bottom. Shape (3, 3), float32.
sobel_y = _constant([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])

#: 4-neighbour Laplacian: responds to blobs and thin lines, zero on flat and linear
#: regions; its entries sum to 0. Shape (3, 3), float32.
laplacian = _constant([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def gaussian(size: int, sigma: float) -> np.ndarray:
    """Return a normalised 2D Gaussian blur kernel.

    Parameters
    ----------
    size : int
        Side length of the kernel, >= 1. Odd sizes centre the Gaussian on a pixel; even sizes
        centre it between the two middle pixels.
    sigma : float
        Standard deviation in pixels, > 0.

    Returns
    -------
    numpy.ndarray
        float32 kernel whose entries sum to 1 (up to float32 rounding).

    Shape
    -----
    (size, size)

    Raises
    ------
    TypeError
        If ``size`` is not an int or ``sigma`` not a number.
    ValueError
        If ``size`` < 1 or ``sigma`` is not a positive finite number.

    Examples
    --------
    >>> k = gaussian(5, 1.0)
    >>> k.shape, k.dtype, round(float(k.sum()), 5)
    ((5, 5), dtype('float32'), 1.0)
    """
    size = check_int("size", size, 1)
    sigma = check_float("sigma", sigma)
    if sigma == 0.0:
        raise ValueError("gaussian: sigma must be a positive finite number, got 0.0")
    check_array_size("size", (size, size), np.float64)
    # Separable: the 2D kernel is the outer product of two normalised 1D kernels, computed in
    # float64 and rounded once at the end.
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


def as_weight(*kernels, dtype=np.float32) -> np.ndarray:
    """Stack 2D kernels into a conv2d weight with one input channel.

    Parameters
    ----------
    *kernels : array_like
        One or more 2D kernels, all of the same shape (kh, kw).
    dtype : numpy dtype, optional
        dtype of the result, float32 (default) or float64 to match the input of
        :func:`rconv.conv2d`.

    Returns
    -------
    numpy.ndarray
        New contiguous array; ``weight[k, 0]`` is ``kernels[k]``.

    Shape
    -----
    (K, 1, kh, kw) with K = ``len(kernels)``: K output feature maps from a single-channel input.

    Raises
    ------
    ValueError
        If no kernel is given, a kernel is not 2D, or the shapes differ.

    Examples
    --------
    >>> as_weight(sobel_x, sobel_y, laplacian).shape
    (3, 1, 3, 3)
    """
    dtype = check_dtype("dtype", dtype)
    if not kernels:
        raise ValueError("as_weight: give at least one 2D kernel (kernels is empty)")
    arrays = [np.asarray(k) for k in kernels]
    for i, a in enumerate(arrays):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
            raise TypeError(f"as_weight: kernels[{i}] must hold numbers, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"as_weight: kernels[{i}] must be 2D (kh, kw), got shape {a.shape}")
        if a.shape != arrays[0].shape:
            raise ValueError(
                f"as_weight: all kernels must have the same shape; kernels[0] is {arrays[0].shape},"
                f" kernels[{i}] is {a.shape}"
            )
    return np.stack(arrays).astype(dtype, copy=False)[:, None, :, :].copy()

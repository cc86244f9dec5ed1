"""Shared test helpers: memory layouts, tolerance checks, integer-sequence search in messages."""

import re

import numpy as np

DTYPES = (np.float32, np.float64)

# Memory layouts an input can arrive in. Every layout holds exactly the same values.
LAYOUTS = ("contiguous", "fortran", "permuted", "strided", "negative", "readonly")

# float32 results must be within 1e-4 of the float64 reference (relative, and absolute scaled by
# the magnitude of the result); float64 within 1e-10.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def with_layout(a, layout, rng):
    """An array holding a's values in the given memory layout."""
    a = np.asarray(a)
    if a.ndim == 0:
        v = np.array(a)  # a 0-d array has a single layout
        if layout == "readonly":
            v.flags.writeable = False
        return v
    if layout == "contiguous":
        v = np.ascontiguousarray(a)
    elif layout == "fortran":
        # Transposed memory order (the view np.moveaxis would give of a reversed-order array).
        v = np.asfortranarray(a)
    elif layout == "permuted":
        # Stored with the axes in a random order, then moved back: a transposed-then-copied view.
        perm = rng.permutation(a.ndim)
        if a.ndim > 1 and np.array_equal(perm, np.arange(a.ndim)):
            perm = perm[::-1].copy()
        src = np.ascontiguousarray(a.transpose(perm))
        v = src.transpose(np.argsort(perm))
    elif layout == "strided":
        # Every axis sliced with a step of 2 or 3 out of a NaN-filled buffer, at an offset, so a
        # kernel that ignores strides reads NaN.
        steps = [int(s) for s in rng.integers(2, 4, size=a.ndim)]
        big = np.full(tuple(n * s + 1 for n, s in zip(a.shape, steps)), np.nan, dtype=a.dtype)
        v = big[tuple(slice(1, 1 + n * s, s) for n, s in zip(a.shape, steps))]
        v[...] = a
    elif layout == "negative":
        # Negative strides: the reverse of a flipped source, on a random non-empty set of axes.
        axes = [i for i in range(a.ndim) if rng.random() < 0.5] or [a.ndim - 1]
        flip = tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(a.ndim))
        src = np.ascontiguousarray(a[flip])
        v = src[flip]
    elif layout == "readonly":
        v = np.array(a, copy=True)
        v.flags.writeable = False
    else:
        raise ValueError(layout)
    assert v.dtype == a.dtype and v.shape == a.shape
    assert np.array_equal(v, a, equal_nan=True)
    return v


def assert_close(got, ref, dtype):
    """got (from rconv, in dtype) agrees with the float64 reference ref."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), f"expected ndarray, got {type(got).__name__}"
    assert got.dtype == dtype, f"dtype {got.dtype} != {dtype}"
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    tol = TOLERANCE[dtype]
    finite = np.abs(ref[np.isfinite(ref)])
    magnitude = max(1.0, float(finite.max()) if finite.size else 0.0)
    np.testing.assert_allclose(
        got.astype(np.float64), ref, rtol=tol, atol=tol * magnitude, equal_nan=True
    )


def ints_in(text):
    return [int(t) for t in re.findall(r"-?\d+", text)]


def mentions_shape(message, shape):
    """True if the integers of shape appear consecutively in message, in any formatting
    ("(1, 3, 5, 5)", "[1, 3, 5, 5]", "1x3x5x5")."""
    nums = ints_in(message)
    shape = list(shape)
    return any(nums[i : i + len(shape)] == shape for i in range(len(nums) - len(shape) + 1))

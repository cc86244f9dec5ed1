"""Shared test helpers: memory layouts, tolerance checks, integer-sequence search in messages."""

import re

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------------------------
# hypothesis drawing shared by the forward and backward tests

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def maybe_int(draw, values):
    """A tuple, or (when all entries agree, sometimes) the plain int."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


def draw_conv_geometry(draw, nd, *, max_channels, max_kernel, max_dilation, max_spatial, max_group_width=None):
    """Channels, groups (single, grouped or depthwise), kernel, dilation, stride, padding (int,
    tuple, "valid" or "same") and padding mode of a valid nd-convolution, with a spatial size
    its padding mode can serve. Stride and dilation come back as tuples. Grouped convolutions
    have up to ``max_group_width`` input channels per group (default: max_channels // groups)."""
    import reference as ref

    group_kind = draw(st.sampled_from(["single", "grouped", "depthwise"]))
    if group_kind == "single":
        groups = 1
        c_in = draw(st.integers(1, max_channels))
        c_out = draw(st.integers(1, max_channels))
    elif group_kind == "grouped":
        groups = draw(st.integers(2, 3))
        width = max_channels // groups if max_group_width is None else max_group_width
        c_in = groups * draw(st.integers(1, width))
        c_out = groups * draw(st.integers(1, 2))
    else:  # depthwise: groups == C, channel multiplier 1 or 2
        c_in = draw(st.integers(1, max_channels))
        groups = c_in
        c_out = c_in * draw(st.integers(1, 2))

    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, max_dilation)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding_mode = draw(st.sampled_from(PADDING_MODES))
    padding_kind = draw(st.sampled_from(["int", "tuple", "valid", "same"]))
    if padding_kind == "int":
        pads = (draw(st.integers(0, 2)),) * nd
        padding = pads[0]
    elif padding_kind == "tuple":
        pads = tuple(draw(st.integers(0, 2)) for _ in range(nd))
        padding = pads
    elif padding_kind == "valid":
        pads = (0,) * nd
        padding = "valid"
    else:
        pads = None
        padding = "same"

    spatial = []
    for i in range(nd):
        extent = dilation[i] * (kernel[i] - 1) + 1
        if pads is not None:
            lo = max(1, extent - 2 * pads[i])
            if padding_mode == "reflect":
                lo = max(lo, pads[i] + 1)
            elif padding_mode == "circular":
                lo = max(lo, pads[i])
        else:
            lo = 1
            if padding_mode in ("reflect", "circular") and stride[i] == 1:
                hi_pad = ref.same_padding(1, kernel[i], 1, dilation[i])[1]
                lo = hi_pad + 1 if padding_mode == "reflect" else max(1, hi_pad)
        spatial.append(draw(st.integers(lo, max(lo, max_spatial))))
    if padding == "same" and padding_mode in ("reflect", "circular"):
        # with stride > 1 the 'same' padding depends on the size: keep the mode's constraint
        for size, (plo, phi) in zip(spatial, ref.conv_pads(spatial, kernel, stride, dilation, "same")):
            if padding_mode == "reflect":
                assume(plo < size and phi < size)
            else:
                assume(plo <= size and phi <= size)
    return dict(
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        kernel=kernel,
        dilation=dilation,
        stride=stride,
        padding=padding,
        padding_mode=padding_mode,
        spatial=tuple(spatial),
    )

"""Plain NumPy float64 reference implementations of rconv's forward operations.

Written from the semantics pinned in DESIGN.md and notes/API.md (PyTorch's rules, plus Keras-style
"same" padding for stride > 1), not from any library's code. Everything is computed in float64 and
kept deliberately simple so that it can be read against the contract:

- convolution: explicit padding with ``np.pad`` (constant / reflect / edge / wrap), then a loop
  over kernel offsets with an ``einsum`` over the channels of each group;
- pooling: a loop over output positions, each window taken as a strided slice;
- the rest: direct formulas.

The hand-checked tests (``test_*_hand_*``) compare this module against values worked out on paper,
so a mistake here cannot silently agree with a mistake in rconv.
"""

import itertools
import math

import numpy as np

_NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def ntuple(value, n):
    """An int or a sequence of n ints -> tuple of n Python ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"expected {n} values, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value),) * n


# ----------------------------------------------------------------------------------------------
# convolution


def same_padding(size, k, s, d):
    """(lo, hi) of 'same' padding for one dimension.

    stride 1: total = d*(k-1); stride > 1 (Keras): out = ceil(size/s),
    total = max((out-1)*s + d*(k-1) + 1 - size, 0). The odd extra element goes at the end.
    """
    extent = d * (k - 1) + 1
    out = -(-size // s)
    total = max((out - 1) * s + extent - size, 0)
    lo = total // 2
    return lo, total - lo


def conv_pads(spatial, kernel, stride, dilation, padding):
    """List of (lo, hi) per spatial dimension for a conv padding argument."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            return [same_padding(L, k, s, d) for L, k, s, d in zip(spatial, kernel, stride, dilation)]
        raise ValueError(f"unknown padding {padding!r}")
    return [(p, p) for p in ntuple(padding, nd)]


def conv_out_size(size, lo, hi, k, s, d):
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """N-d cross-correlation as torch.nn.functional.conv{1,2,3}d, in float64.

    x: (N, C, *spatial) or unbatched (C, *spatial); w: (K, C/groups, *kernel); b: (K,) or None.
    """
    w = np.asarray(w, dtype=np.float64)
    nd = w.ndim - 2
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None]
    n, c = x.shape[:2]
    k_out = w.shape[0]
    kernel = w.shape[2:]
    stride = ntuple(stride, nd)
    dilation = ntuple(dilation, nd)
    pads = conv_pads(x.shape[2:], kernel, stride, dilation, padding)

    pad_width = [(0, 0), (0, 0)] + list(pads)
    if any(lo or hi for lo, hi in pads):
        xp = np.pad(x, pad_width, mode=_NP_PAD_MODE[padding_mode])
    else:
        xp = x
    out_size = [
        (xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nd)
    ]
    assert all(o >= 1 for o in out_size), "reference: kernel larger than padded input"

    g = groups
    cg, kg = c // g, k_out // g
    assert cg * g == c and kg * g == k_out and w.shape[1] == cg
    xg = xp.reshape((n, g, cg) + xp.shape[2:])
    wg = w.reshape((g, kg, cg) + tuple(kernel))
    out = np.zeros((n, g, kg) + tuple(out_size), dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf = NaN is the expected result, not a warning
        for offs in itertools.product(*(range(k) for k in kernel)):
            window = tuple(
                slice(o * d, o * d + s * (m - 1) + 1, s)
                for o, d, s, m in zip(offs, dilation, stride, out_size)
            )
            patch = xg[(Ellipsis,) + window]  # (n, g, cg, *out)
            w_at = wg[(Ellipsis,) + offs]  # (g, kg, cg)
            out += np.einsum("ngc...,gkc->ngk...", patch, w_at)
    out = out.reshape((n, k_out) + tuple(out_size))
    if b is not None:
        out += np.asarray(b, dtype=np.float64).reshape((1, k_out) + (1,) * nd)
    return out[0] if unbatched else out


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """(grad_input, grad_weight, grad_bias) of conv(x, w, b) for the output gradient dy, float64.

    Batched x (N, C, *spatial) only. The sums follow the definition: the weight gradient is
    the correlation of the padded input (its zeros included) with dy; the input gradient adds,
    for every kernel offset, dy times that weight into the positions of the padded input the
    offset read, then keeps the positions that are the input (zeros mode) or folds the padded
    copies back onto the positions they copied (reflect / replicate / circular).
    """
    w = np.asarray(w, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = w.ndim - 2
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    k_out, kernel = w.shape[0], w.shape[2:]
    stride, dilation = ntuple(stride, nd), ntuple(dilation, nd)
    pads = conv_pads(spatial, kernel, stride, dilation, padding)
    pad_width = [(0, 0), (0, 0)] + list(pads)
    xp = np.pad(x, pad_width, mode=_NP_PAD_MODE[padding_mode])
    out_size = dy.shape[2:]
    g = groups
    cg, kg = c // g, k_out // g
    xg = xp.reshape((n, g, cg) + xp.shape[2:])
    dyg = dy.reshape((n, g, kg) + out_size)
    wg = w.reshape((g, kg, cg) + tuple(kernel))
    gxp = np.zeros_like(xg)
    gw = np.zeros_like(wg)
    with np.errstate(invalid="ignore", over="ignore"):
        for offs in itertools.product(*(range(k) for k in kernel)):
            window = tuple(
                slice(o * d, o * d + s * (m - 1) + 1, s)
                for o, d, s, m in zip(offs, dilation, stride, out_size)
            )
            gxp[(Ellipsis,) + window] += np.einsum("ngk...,gkc->ngc...", dyg, wg[(Ellipsis,) + offs])
            patch = xg[(Ellipsis,) + window].reshape(n, g, cg, -1)
            gw[(Ellipsis,) + offs] = np.einsum("ngcp,ngkp->gkc", patch, dyg.reshape(n, g, kg, -1))
        # Which input position each padded position copies (-1: a zero of the padding).
        index = np.arange(math.prod(spatial)).reshape(spatial)
        if padding_mode == "zeros":
            index = np.pad(index, pads, mode="constant", constant_values=-1)
        else:
            index = np.pad(index, pads, mode=_NP_PAD_MODE[padding_mode])
        index = index.reshape(-1)
        kept = index >= 0
        gx = np.zeros((n * c, math.prod(spatial)))
        flat = gxp.reshape(n * c, -1)
        for row in range(n * c):
            np.add.at(gx[row], index[kept], flat[row, kept])
    grad_bias = dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
    return gx.reshape(x.shape), gw.reshape(w.shape), grad_bias


# ----------------------------------------------------------------------------------------------
# pooling


def pool_out_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size: floor/ceil((in + 2p - d(k-1) - 1)/s) + 1, and with
    ceil_mode the last window must start inside the input or the left padding."""
    num = size + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-num // s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
    else:
        out = num // s + 1
    return out


def _batched(x, nd):
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == nd + 1
    return (x[None] if unbatched else x), unbatched


def max_pool(x, nd, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling as torch.nn.functional.max_pool{1,2,3}d(..., return_indices=True), float64.

    Returns (values, indices); indices are flat positions in each (n, c) input plane, the first
    maximum in window order (row-major over kernel offsets) as PyTorch; a window with a NaN gives
    NaN. A window lying wholly in the padding gives -inf and index -1 (reference marker only).
    """
    x, unbatched = _batched(x, nd)
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    k = ntuple(kernel_size, nd)
    s = k if stride is None else ntuple(stride, nd)
    p = ntuple(padding, nd)
    d = ntuple(dilation, nd)
    out_size = [pool_out_size(spatial[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(nd)]
    assert all(o >= 1 for o in out_size)
    # Right padding: the symmetric padding, or more where a ceil_mode window hangs past it
    # (elements beyond the padding are simply absent in PyTorch: -inf has the same effect).
    hi = [
        max(p[i], (out_size[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - spatial[i] - p[i])
        for i in range(nd)
    ]
    pad_width = [(p[i], hi[i]) for i in range(nd)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pad_width, mode="constant", constant_values=-np.inf)
    flat = np.arange(math.prod(spatial), dtype=np.int64).reshape(spatial)
    flat_p = np.pad(flat, pad_width, mode="constant", constant_values=-1)

    win_len = math.prod(k)
    values = np.empty((n, c) + tuple(out_size), dtype=np.float64)
    indices = np.empty((n, c) + tuple(out_size), dtype=np.int64)
    for o in np.ndindex(*out_size):
        window = tuple(
            slice(o[i] * s[i], o[i] * s[i] + d[i] * (k[i] - 1) + 1, d[i]) for i in range(nd)
        )
        win = xp[(Ellipsis,) + window].reshape(n, c, win_len)
        win_idx = flat_p[window].reshape(win_len)
        values[(Ellipsis,) + o] = win.max(axis=-1)  # NaN-propagating
        indices[(Ellipsis,) + o] = win_idx[np.argmax(win, axis=-1)]  # first max / first NaN
    if unbatched:
        return values[0], indices[0]
    return values, indices


def avg_pool(x, nd, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Average pooling as torch.nn.functional.avg_pool{1,2,3}d, float64.

    Divisor with count_include_pad: the window clipped to [-p, in + p) (so padding counts, a
    ceil_mode overhang beyond the padding does not); without: the in-bounds element count;
    divisor_override, when given, for every window.
    """
    x, unbatched = _batched(x, nd)
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    k = ntuple(kernel_size, nd)
    s = k if stride is None else ntuple(stride, nd)
    p = ntuple(padding, nd)
    out_size = [pool_out_size(spatial[i], k[i], s[i], p[i], 1, ceil_mode) for i in range(nd)]
    assert all(o >= 1 for o in out_size)
    axes = tuple(range(2, 2 + nd))
    out = np.empty((n, c) + tuple(out_size), dtype=np.float64)
    for o in np.ndindex(*out_size):
        start = [o[i] * s[i] - p[i] for i in range(nd)]
        end = [min(start[i] + k[i], spatial[i] + p[i]) for i in range(nd)]
        padded_count = math.prod(end[i] - start[i] for i in range(nd))
        lo = [max(start[i], 0) for i in range(nd)]
        hi = [min(end[i], spatial[i]) for i in range(nd)]
        inside_count = math.prod(hi[i] - lo[i] for i in range(nd))
        window = tuple(slice(lo[i], hi[i]) for i in range(nd))
        total = x[(Ellipsis,) + window].sum(axis=axes)
        divisor = padded_count if count_include_pad else inside_count
        out[(Ellipsis,) + o] = total / (divisor if divisor_override is None else divisor_override)
    return out[0] if unbatched else out


def adaptive_output_size(spatial, output_size):
    nd = len(spatial)
    if isinstance(output_size, (tuple, list)):
        assert len(output_size) == nd
        return tuple(L if o is None else int(o) for L, o in zip(spatial, output_size))
    return (int(output_size),) * nd


def adaptive_avg_pool(x, nd, output_size):
    """Adaptive average pooling: window i of a dim = [floor(i*in/out), ceil((i+1)*in/out))."""
    x, unbatched = _batched(x, nd)
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out_size = adaptive_output_size(spatial, output_size)
    axes = tuple(range(2, 2 + nd))
    out = np.empty((n, c) + out_size, dtype=np.float64)
    for o in np.ndindex(*out_size):
        window = tuple(
            slice((o[i] * spatial[i]) // out_size[i], -(-((o[i] + 1) * spatial[i]) // out_size[i]))
            for i in range(nd)
        )
        out[(Ellipsis,) + o] = x[(Ellipsis,) + window].mean(axis=axes)
    return out[0] if unbatched else out


# ----------------------------------------------------------------------------------------------
# elementwise, linear, softmax family


def relu(x):
    """max(x, 0) with NaN kept (np.maximum propagates NaN)."""
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def linear(x, w, b=None):
    """x (*, in) @ w.T (in, out) + b -> (*, out), float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    out = np.einsum("...i,oi->...o", x, w)
    if b is not None:
        out = out + np.asarray(b, dtype=np.float64)
    return out


def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def cross_entropy(logits, target):
    """Mean over the batch of -log_softmax(logits)[n, target[n]]."""
    lsm = log_softmax(logits, axis=1)
    target = np.asarray(target).astype(np.int64)
    return -lsm[np.arange(lsm.shape[0]), target].mean()

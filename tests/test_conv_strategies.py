"""Every convolution strategy, forced one at a time, against the float64 reference.

The dispatcher picks a kernel strategy (im2col, depthwise, winograd, direct) per direction
(forward, input gradient, weight gradient) from the geometry. ``rconv._rconv._conv_strategies``
says which strategies serve a geometry on this CPU, and ``_force_conv_strategy`` makes every
later call use one of them, so each is checked on every geometry it serves, not only on those
the dispatcher would give it. Hypothesis draws from the whole geometry space: 1-3 dimensions,
1-128 channels, kernels 1-11 per dimension, stride, dilation, padding up to and past the
kernel, groups (single, grouped, depthwise), batch 1-4, odd and prime sizes, and now and then an
inf or NaN in an operand, which every strategy must put where the plain sums put it.

The work per example is capped (``budget``) by shrinking the channel counts, so wide geometries
come with small maps and the other way round. ``RCONV_HYPOTHESIS_PROFILE=thorough`` runs many
more examples with a ten times larger budget.
"""

import contextlib
import itertools
import math
import os

import numpy as np
import pytest
import rconv
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from helpers import assert_close

native = rconv._rconv
DIRECTIONS = ("forward", "input", "weight")
STRATEGIES = ("im2col", "depthwise", "winograd", "direct")
THOROUGH = os.environ.get("RCONV_HYPOTHESIS_PROFILE") == "thorough"
# Multiply-adds of one convolution (one direction) that an example may cost.
BUDGET = 2 * 10**7 if THOROUGH else 2 * 10**6
PRIMES_AND_ODD = (1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19, 23, 29, 31, 37)


@contextlib.contextmanager
def forced(direction, strategy):
    native._force_conv_strategy(direction, strategy)
    try:
        yield
    finally:
        native._force_conv_strategy(direction, None)


@pytest.fixture(autouse=True)
def automatic_choice():
    for d in DIRECTIONS:
        native._force_conv_strategy(d, None)
    yield
    for d in DIRECTIONS:
        native._force_conv_strategy(d, None)


def conv_fn(nd, suffix=""):
    return getattr(rconv, f"conv{nd}d{suffix}")


def out_size(size, lo, hi, k, s, d):
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


@st.composite
def geometries(draw):
    """A valid convolution with arrays, its keyword arguments and its cost, within BUDGET."""
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    # Shapes that the specialised strategies serve come up often: Winograd (2-D, 3x3, stride
    # and dilation 1, one group), depthwise (one input channel per group), pointwise (1x1).
    flavour = draw(st.sampled_from(["any", "any", "winograd", "depthwise", "pointwise", "wide"]))
    if flavour == "winograd":
        nd = 2
    kernel = tuple(draw(st.integers(1, 11 if nd < 3 else 7)) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(nd))
    if flavour == "winograd":
        kernel, dilation, stride = (3, 3), (1, 1), (1, 1)
    elif flavour == "pointwise":
        kernel = (1,) * nd
    padding_kind = draw(st.sampled_from(["int", "tuple", "tuple", "valid", "same"]))
    if padding_kind == "same":
        padding = "same"
    elif padding_kind == "valid":
        padding = "valid"
    else:
        # Up to and past the dilated kernel's extent.
        pads = tuple(draw(st.integers(0, d * (k - 1) + 2)) for k, d in zip(kernel, dilation))
        padding = pads if padding_kind == "tuple" else pads[0]
    padding_mode = draw(st.sampled_from(["zeros"] * 5 + ["reflect", "replicate", "circular"]))

    spatial = []
    for i in range(nd):
        size = draw(st.one_of(st.sampled_from(PRIMES_AND_ODD), st.integers(1, 48 if nd == 1 else 24)))
        spatial.append(size)
    pads = ref.conv_pads(spatial, kernel, stride, dilation, padding)
    for i, (lo, hi) in enumerate(pads):
        extent = dilation[i] * (kernel[i] - 1) + 1
        # Big enough for the kernel, and for the padding mode's copies.
        spatial[i] = max(spatial[i], extent - lo - hi, 1)
        if padding_mode == "reflect":
            spatial[i] = max(spatial[i], lo + 1, hi + 1)
        elif padding_mode == "circular":
            spatial[i] = max(spatial[i], lo, hi)
    pads = ref.conv_pads(spatial, kernel, stride, dilation, padding)
    if padding_mode != "zeros":
        # "same" with a stride depends on the size: recheck the mode's constraint.
        for size, (lo, hi) in zip(spatial, pads):
            if (padding_mode == "reflect" and max(lo, hi) >= size) or (padding_mode == "circular" and max(lo, hi) > size):
                padding_mode = "zeros"
    out = [out_size(s, lo, hi, k, st_, d) for s, (lo, hi), k, st_, d in zip(spatial, pads, kernel, stride, dilation)]
    assert all(o >= 1 for o in out)

    n = draw(st.integers(1, 4))
    if flavour == "depthwise":
        c_in = draw(st.integers(1, 128))
        groups = c_in
        per_in, per_out = 1, draw(st.integers(1, 5))
    else:
        groups = draw(st.sampled_from([1, 1, 1, 2, 3, 4])) if flavour != "winograd" else 1
        per_in = draw(st.integers(1, 128 // groups))
        per_out = draw(st.integers(1, 128 // groups))
        if flavour == "wide":
            per_in, per_out = max(per_in, 128 // groups // 2), max(per_out, 16)
    # Cost of one direction: every output position of every output channel sums per_in taps.
    kvol = math.prod(kernel)
    cost = lambda: n * math.prod(out) * groups * per_out * per_in * kvol  # noqa: E731
    while cost() > BUDGET and (per_in > 1 or per_out > 1):
        if per_in >= per_out:
            per_in = max(1, per_in // 2)
        else:
            per_out = max(1, per_out // 2)
    while cost() > BUDGET and n > 1:
        n -= 1
    assume(cost() <= BUDGET)  # rare: a large 3-D map with a large kernel
    c_in, c_out = groups * per_in, groups * per_out

    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in) + tuple(spatial))
    w = rng.standard_normal((c_out, per_in) + kernel)
    b = rng.standard_normal(c_out)
    dy = rng.standard_normal((n, c_out) + tuple(out))
    # Now and then an inf or NaN in one operand, at corners (next to the padding) or anywhere.
    poison = draw(st.sampled_from([None] * 5 + ["x", "w", "dy"]))
    if poison is not None:
        arr = {"x": x, "w": w, "dy": dy}[poison]
        for _ in range(draw(st.integers(1, 3))):
            value = draw(st.sampled_from([np.inf, -np.inf, np.nan]))
            if draw(st.booleans()):
                at = tuple(rng.choice([0, s - 1]) for s in arr.shape)
            else:
                at = tuple(rng.integers(0, s) for s in arr.shape)
            arr[at] = value
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode)
    arrays = dict(x=x.astype(dtype), w=w.astype(dtype), b=b.astype(dtype), dy=dy.astype(dtype))
    return nd, arrays, kwargs


def served(arrays, kwargs):
    got = native._conv_strategies(arrays["x"].shape, arrays["w"].shape, **kwargs)
    assert set(got) == set(DIRECTIONS)
    assert all("im2col" in got[d] for d in DIRECTIONS), got
    return got


def check_every_strategy(nd, arrays, kwargs):
    x, w, b, dy = arrays["x"], arrays["w"], arrays["b"], arrays["dy"]
    dtype = x.dtype
    want_y = ref.conv(x, w, b, **kwargs)
    want_dx, want_dw, want_db = ref.conv_backward(dy, x, w, **kwargs)
    strategies = served(arrays, kwargs)
    label = f"x {x.shape} w {w.shape} {kwargs} {dtype}"
    for direction in DIRECTIONS:
        for strategy in [None] + strategies[direction]:
            with forced(direction, strategy):
                what = f"{direction} by {strategy or 'automatic choice'}: {label}"
                if direction == "forward":
                    y = conv_fn(nd)(x, w, b, **kwargs)
                    assert_close_labelled(y, want_y, dtype, what)
                    continue
                dx, dw, db = conv_fn(nd, "_backward")(dy, x, w, **kwargs)
                if direction == "input":
                    assert_close_labelled(dx, want_dx, dtype, what)
                else:
                    assert_close_labelled(dw, want_dw, dtype, what)
                    assert_close_labelled(db, want_db, dtype, what + " (bias)")


def assert_close_labelled(got, want, dtype, what):
    try:
        assert_close(got, want, dtype)
    except AssertionError as e:
        raise AssertionError(f"{what}\n{e}") from None


@settings(max_examples=4 * settings().max_examples)
@given(geometries())
def test_every_strategy_matches_the_reference(case):
    check_every_strategy(*case)


# ----------------------------------------------------------------------------------------------
# each strategy and direction on at least one geometry, whatever hypothesis draws


def arrays_for(x_shape, w_shape, kwargs, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y = ref.conv(x, w, b, **kwargs)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return dict(x=x, w=w, b=b, dy=dy)


COVERAGE = [
    # (x shape, w shape, kwargs, strategies expected to serve (direction, strategy))
    ((2, 4, 9, 11), (6, 4, 3, 3), dict(padding=1), {("forward", "winograd"), ("input", "winograd")}),
    ((2, 6, 9, 8), (12, 1, 3, 3), dict(padding=1, groups=6), {(d, "depthwise") for d in DIRECTIONS}),
    ((2, 3, 10, 9), (5, 3, 5, 5), dict(padding=2), {(d, "direct") for d in DIRECTIONS}),
    ((1, 2, 13), (3, 2, 4), dict(stride=2, padding=3), {("forward", "direct"), ("weight", "direct")}),
    ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), dict(padding=(1, 0, 2)), {(d, "direct") for d in DIRECTIONS}),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs, expected", COVERAGE)
def test_each_strategy_serves_its_geometries(x_shape, w_shape, kwargs, expected):
    full = dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros")
    full.update(kwargs)
    arrays = arrays_for(x_shape, w_shape, full)
    strategies = served(arrays, full)
    has_simd = "direct" in strategies["forward"] or "direct" in strategies["weight"]
    for direction, strategy in expected:
        if strategy == "direct" and not has_simd:
            continue  # the direct loops need AVX2 or AVX-512
        assert strategy in strategies[direction], (direction, strategy, strategies)
    check_every_strategy(len(x_shape) - 2, arrays, full)


def test_a_forced_strategy_that_does_not_serve_the_geometry_is_an_error():
    x = np.zeros((1, 2, 6, 6), np.float32)
    w = np.zeros((3, 2, 5, 5), np.float32)  # 5x5: no Winograd
    with forced("forward", "winograd"):
        with pytest.raises(ValueError, match="strategy.*winograd"):
            rconv.conv2d(x, w)
    with forced("weight", "depthwise"):
        with pytest.raises(ValueError, match="strategy.*depthwise"):
            rconv.conv2d_backward(np.zeros((1, 3, 2, 2), np.float32), x, w)
    with pytest.raises(ValueError, match="strategy"):
        native._force_conv_strategy("forward", "fft")
    with pytest.raises(ValueError, match="direction"):
        native._force_conv_strategy("sideways", "im2col")
    assert rconv.conv2d(x, w).shape == (1, 3, 2, 2)


# ----------------------------------------------------------------------------------------------
# the geometries of issue 10, item 1 (internal error in the direct path), against im2col


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((1, 64, 64, 64), (64, 64, 7, 7), dict(padding=3)),
        ((1, 64, 59, 59), (64, 64, 7, 7), dict(padding=3)),
        ((1, 64, 62, 62), (64, 64, 11, 11), dict(padding=5)),
        ((1, 32, 40, 40), (32, 32, 3, 3), dict(padding=2, dilation=2)),
        ((1, 32, 19, 19, 19), (8, 32, 5, 5, 5), dict(padding=2)),
        ((1, 28, 64, 64), (31, 28, 7, 7), dict()),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_channel_padded_convolutions_agree_with_im2col(x_shape, w_shape, kwargs, dtype):
    nd = len(x_shape) - 2
    arrays = arrays_for(x_shape, w_shape, kwargs, dtype=dtype, seed=1) if nd < 3 else None
    if arrays is None:  # the 3-D reference is slow at this size: im2col is the reference
        rng = np.random.default_rng(1)
        arrays = {k: rng.standard_normal(s).astype(dtype) for k, s in (("x", x_shape), ("w", w_shape), ("b", w_shape[:1]))}
        arrays["dy"] = None
    x, w, b = arrays["x"], arrays["w"], arrays["b"]
    with forced("forward", "im2col"):
        want_y = conv_fn(nd)(x, w, b, **kwargs)
    dy = arrays["dy"] if arrays["dy"] is not None else np.random.default_rng(2).standard_normal(want_y.shape).astype(dtype)
    with forced("input", "im2col"), forced("weight", "im2col"):
        want = conv_fn(nd, "_backward")(dy, x, w, **kwargs)
    y = conv_fn(nd)(x, w, b, **kwargs)
    got = conv_fn(nd, "_backward")(dy, x, w, **kwargs)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    scale = lambda a: max(1.0, float(np.abs(a).max()))  # noqa: E731
    np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol * scale(want_y))
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, rtol=tol, atol=tol * scale(wnt))


# ----------------------------------------------------------------------------------------------
# issue 10, item 8: an inf or NaN in a weight next to the zero padding


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_infinite_weight_meets_the_zero_padding_in_every_strategy(strategy, dtype):
    cases = [
        # depthwise 3x3 (rconv gave no NaN where PyTorch gives 19)
        ((1, 2, 5, 5), (2, 1, 3, 3), dict(padding=1, groups=2)),
        # dense, 2 channels
        ((1, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
        ((1, 16, 6, 7), (16, 16, 3, 3), dict(padding=1)),
        ((1, 3, 9, 8), (4, 3, 5, 5), dict(padding=3)),
        ((1, 2, 11), (3, 2, 5), dict(padding=4)),
    ]
    for x_shape, w_shape, kwargs in cases:
        full = dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros")
        full.update(kwargs)
        arrays = arrays_for(x_shape, w_shape, full, dtype=dtype)
        arrays["w"].flat[0] = np.inf
        arrays["w"].flat[-1] = np.nan
        strategies = served(arrays, full)
        nd = len(x_shape) - 2
        want_y = ref.conv(arrays["x"], arrays["w"], arrays["b"], **full)
        want_dx, _, _ = ref.conv_backward(arrays["dy"], arrays["x"], arrays["w"], **full)
        assert np.isnan(want_y).any()
        if strategy in strategies["forward"]:
            with forced("forward", strategy):
                y = conv_fn(nd)(arrays["x"], arrays["w"], arrays["b"], **full)
            np.testing.assert_array_equal(np.isnan(y), np.isnan(want_y))
            assert_close(y, want_y, dtype)
        if strategy in strategies["input"]:
            with forced("input", strategy):
                dx = conv_fn(nd, "_backward")(arrays["dy"], arrays["x"], arrays["w"], **full)[0]
            np.testing.assert_array_equal(np.isnan(dx), np.isnan(want_dx))
            assert_close(dx, want_dx, dtype)


# ----------------------------------------------------------------------------------------------
# PyTorch as an optional oracle for where inf and NaN land


@pytest.mark.parametrize("seed", range(4))
def test_non_finite_operands_land_where_pytorch_float64_puts_them(seed):
    """PyTorch's float64 convolutions sum the definition's products (its float32 path, oneDNN,
    skips padded zeros and so gives fewer NaN next to an infinite weight); rconv gives the
    float64 answer in both precisions, with every strategy forced in turn."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    checked = 0
    while checked < 40:
        nd = int(rng.integers(1, 4))
        c = int(rng.integers(1, 5))
        groups = c if rng.random() < 0.3 else 1
        k = c * int(rng.integers(1, 3)) if groups > 1 else int(rng.integers(1, 5))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        spatial = tuple(int(v) for v in rng.integers(4, 8, nd))
        kwargs = dict(stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, 3)), dilation=int(rng.integers(1, 3)), groups=groups)
        if any(s + 2 * kwargs["padding"] < kwargs["dilation"] * (kk - 1) + 1 for s, kk in zip(spatial, kernel)):
            continue
        x = rng.standard_normal((2, c) + spatial)
        w = rng.standard_normal((k, c // groups) + kernel)
        y = ref.conv(x, w, **kwargs)
        dy = rng.standard_normal(y.shape)
        target = [x, w, dy][int(rng.integers(0, 3))]
        target[tuple(int(rng.choice([0, s - 1])) for s in target.shape)] = rng.choice([np.inf, -np.inf, np.nan])
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        ty = getattr(torch.nn.functional, f"conv{nd}d")(tx, tw, None, **kwargs)
        ty.backward(torch.tensor(dy))
        want = {"forward": ty.detach().numpy(), "input": tx.grad.numpy(), "weight": tw.grad.numpy()}
        full = dict(kwargs, padding_mode="zeros")
        strategies = served(dict(x=x, w=w), full)
        for dtype in (np.float32, np.float64):
            xs, ws, dys = (a.astype(dtype) for a in (x, w, dy))
            for direction in DIRECTIONS:
                for strategy in [None] + strategies[direction]:
                    with forced(direction, strategy):
                        if direction == "forward":
                            got = conv_fn(nd)(xs, ws, **kwargs)
                        else:
                            dx, dw, _ = conv_fn(nd, "_backward")(dys, xs, ws, **kwargs)
                            got = dx if direction == "input" else dw
                    what = f"{direction} by {strategy}, {dtype.__name__}, x {x.shape} w {w.shape} {kwargs}"
                    np.testing.assert_array_equal(np.isnan(got), np.isnan(want[direction]), err_msg=what)
                    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want[direction]), err_msg=what)
                    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want[direction]), err_msg=what)
        checked += 1

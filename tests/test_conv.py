"""conv1d / conv2d / conv3d against the float64 reference, plus hand-checked cases."""

import numpy as np
import pytest
import rconv
from hypothesis import assume, given
from hypothesis import strategies as st

import reference as ref
from helpers import DTYPES, LAYOUTS, PADDING_MODES, assert_close, draw_conv_geometry, maybe_int, with_layout

MAX_SPATIAL = {1: 16, 2: 9, 3: 5}
MAX_KERNEL = {1: 5, 2: 3, 3: 3}
MAX_DILATION = {1: 3, 2: 2, 3: 2}
MAX_CHANNELS = {1: 6, 2: 6, 3: 4}


def conv_fn(nd):
    return getattr(rconv, f"conv{nd}d")


@st.composite
def conv_cases(draw, nd):
    g = draw_conv_geometry(
        draw, nd, max_channels=MAX_CHANNELS[nd], max_kernel=MAX_KERNEL[nd], max_dilation=MAX_DILATION[nd],
        max_spatial=MAX_SPATIAL[nd],
    )
    c_in, c_out, groups, kernel, spatial = g["c_in"], g["c_out"], g["groups"], g["kernel"], g["spatial"]
    stride, dilation, padding, padding_mode = g["stride"], g["dilation"], g["padding"], g["padding_mode"]

    return dict(
        nd=nd,
        n=draw(st.integers(1, 3)),
        unbatched=draw(st.integers(0, 4)) == 0,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        kernel=kernel,
        spatial=tuple(spatial),
        stride=maybe_int(draw, stride),
        dilation=maybe_int(draw, dilation),
        padding=padding,
        padding_mode=padding_mode,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        w_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_conv_arrays(case):
    rng = np.random.default_rng(case["seed"])
    dtype = case["dtype"]
    x_shape = (case["c_in"],) + case["spatial"]
    if not case["unbatched"]:
        x_shape = (case["n"],) + x_shape
    w_shape = (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(case["c_out"]).astype(dtype) if case["bias"] else None
    return rng, x, w, b


def conv_kwargs(case):
    return dict(
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
        padding_mode=case["padding_mode"],
    )


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_conv_matches_reference(nd, data):
    case = data.draw(conv_cases(nd), label="case")
    rng, x, w, b = make_conv_arrays(case)
    xv = with_layout(x, case["x_layout"], rng)
    wv = with_layout(w, case["w_layout"], rng)
    x_before, w_before = xv.copy(), wv.copy()

    got = conv_fn(nd)(xv, wv, bias=b, **conv_kwargs(case))
    expected = ref.conv(x, w, b, **conv_kwargs(case))

    assert_close(got, expected, case["dtype"])
    # inputs are read, never written
    assert np.array_equal(xv, x_before) and np.array_equal(wv, w_before)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_positional_bias_and_functional_alias(nd, dtype):
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 4) + (5,) * nd).astype(dtype)
    w = rng.standard_normal((4, 2) + (3,) * nd).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    got = conv_fn(nd)(x, w, b, 1, 1, 1, 2, "zeros")
    assert_close(got, ref.conv(x, w, b, padding=1, groups=2), dtype)
    got_f = getattr(rconv.functional, f"conv{nd}d")(x, w, b, padding=1, groups=2)
    assert np.array_equal(got, got_f)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_empty_batch(nd, dtype):
    x = np.zeros((0, 3) + (6,) * nd, dtype=dtype)
    w = np.ones((4, 3) + (3,) * nd, dtype=dtype)
    got = conv_fn(nd)(x, w, np.ones(4, dtype=dtype))
    assert isinstance(got, np.ndarray)
    assert got.shape == (0, 4) + (4,) * nd
    assert got.dtype == dtype


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_conv_same_padding_keeps_size(nd, padding_mode):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3) + (5,) * nd)
    for k in (1, 2, 3, 4):
        w = rng.standard_normal((2, 3) + (k,) * nd)
        got = conv_fn(nd)(x, w, padding="same", padding_mode=padding_mode)
        assert got.shape == (2, 2) + (5,) * nd
        assert_close(got, ref.conv(x, w, padding="same", padding_mode=padding_mode), np.float64)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_same_padding_with_stride_is_ceil(nd):
    rng = np.random.default_rng(11)
    for size in (4, 5, 6, 7):
        for stride in (2, 3):
            x = rng.standard_normal((1, 2) + (size,) * nd)
            w = rng.standard_normal((3, 2) + (3,) * nd)
            got = conv_fn(nd)(x, w, stride=stride, padding="same")
            assert got.shape == (1, 3) + (-(-size // stride),) * nd
            assert_close(got, ref.conv(x, w, stride=stride, padding="same"), np.float64)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_large_values_relative_precision(nd, dtype):
    # magnitudes far from 1: the relative tolerance has to hold, not only the absolute one
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3) + (6,) * nd) * 1e3).astype(dtype)
    w = (rng.standard_normal((4, 3) + (3,) * nd) * 1e2).astype(dtype)
    assert_close(conv_fn(nd)(x, w, padding=1), ref.conv(x, w, padding=1), dtype)


# ----------------------------------------------------------------------------------------------
# hand-checked cases: these pin the reference itself to values worked out on paper


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_hand_sobel_vertical_edge(dtype):
    # image 5x5: columns 0-1 dark (0), columns 2-4 bright (1): a vertical edge.
    img = np.zeros((1, 1, 5, 5), dtype=dtype)
    img[..., 2:] = 1
    w = np.stack([SOBEL_X, SOBEL_X.T])[:, None].astype(dtype)  # (2, 1, 3, 3): x and y
    expected = np.zeros((1, 2, 3, 3))
    expected[0, 0] = [[4, 4, 0]] * 3  # cross-correlation: right column minus left column
    expected[0, 1] = 0  # no horizontal edge
    assert np.array_equal(ref.conv(img, w), expected)
    got = rconv.conv2d(img, w)
    assert got.dtype == dtype
    assert np.array_equal(got, expected)


def test_conv2d_hand_sobel_horizontal_edge_with_padding():
    img = np.zeros((4, 4))
    img[2:, :] = 2.0  # rows 2-3 bright
    w = SOBEL_X.T[None, None]  # sobel_y (bottom row minus top row)
    # zero padding 1: output 4x4; row 1 and 2 straddle the edge
    expected = np.array(
        [
            [0, 0, 0, 0],
            [6, 8, 8, 6],
            [6, 8, 8, 6],
            [-6, -8, -8, -6],
        ],
        dtype=np.float64,
    )
    assert np.array_equal(ref.conv(img[None], w, padding=1)[0], expected)
    got = rconv.conv2d(img[None, None], w, padding=1)
    assert np.array_equal(got[0, 0], expected)


def test_conv1d_hand_stride_padding_dilation():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, 1.0]]])
    cases = [
        (dict(padding=1), [1, 3, 5, 7, 4]),
        (dict(padding=1, stride=2), [1, 5, 4]),
        (dict(dilation=2), [4, 6]),
        (dict(dilation=3), [5]),
        (dict(padding=2, dilation=2, stride=3), [1, 6]),
    ]
    for kwargs, expected in cases:
        assert np.array_equal(ref.conv(x, w, **kwargs)[0, 0], expected), kwargs
        got = rconv.conv1d(x, w, **kwargs)
        assert np.array_equal(got[0, 0], expected), kwargs


@pytest.mark.parametrize(
    "padding_mode, expected",
    [
        ("zeros", [0, 0, 1, 2, 3, 4, 0, 0]),
        ("reflect", [3, 2, 1, 2, 3, 4, 3, 2]),
        ("replicate", [1, 1, 1, 2, 3, 4, 4, 4]),
        ("circular", [3, 4, 1, 2, 3, 4, 1, 2]),
    ],
)
def test_conv1d_hand_padding_modes(padding_mode, expected):
    # a 1-tap identity kernel makes the output the padded input itself
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.ones((1, 1, 1))
    assert np.array_equal(ref.conv(x, w, padding=2, padding_mode=padding_mode)[0, 0], expected)
    got = rconv.conv1d(x, w, padding=2, padding_mode=padding_mode)
    assert np.array_equal(got[0, 0], expected)


def test_conv2d_hand_padding_modes_corners():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    w = np.ones((1, 1, 1, 1))
    expected = {
        "reflect": [[5, 4, 5, 6, 5], [2, 1, 2, 3, 2], [5, 4, 5, 6, 5], [8, 7, 8, 9, 8], [5, 4, 5, 6, 5]],
        "replicate": [[1, 1, 2, 3, 3], [1, 1, 2, 3, 3], [4, 4, 5, 6, 6], [7, 7, 8, 9, 9], [7, 7, 8, 9, 9]],
        "circular": [[9, 7, 8, 9, 7], [3, 1, 2, 3, 1], [6, 4, 5, 6, 4], [9, 7, 8, 9, 7], [3, 1, 2, 3, 1]],
    }
    for mode, exp in expected.items():
        assert np.array_equal(ref.conv(x, w, padding=1, padding_mode=mode)[0, 0], exp), mode
        assert np.array_equal(rconv.conv2d(x, w, padding=1, padding_mode=mode)[0, 0], exp), mode


def test_conv1d_hand_same_padding():
    w3 = np.ones((1, 1, 3))
    # stride 2 (Keras rule): in 5 -> out 3, total pad 2 -> (1, 1)
    x5 = np.arange(1.0, 6.0)[None, None]
    assert np.array_equal(ref.conv(x5, w3, stride=2, padding="same")[0, 0], [3, 9, 9])
    assert np.array_equal(rconv.conv1d(x5, w3, stride=2, padding="same")[0, 0], [3, 9, 9])
    # stride 2: in 6 -> out 3, total pad 1 -> (0, 1): the extra goes at the end
    x6 = np.arange(1.0, 7.0)[None, None]
    assert np.array_equal(ref.conv(x6, w3, stride=2, padding="same")[0, 0], [6, 12, 11])
    assert np.array_equal(rconv.conv1d(x6, w3, stride=2, padding="same")[0, 0], [6, 12, 11])
    # even kernel, stride 1: total pad 1 -> (0, 1)
    x3 = np.array([[[1.0, 2.0, 3.0]]])
    w2 = np.array([[[1.0, 10.0]]])
    assert np.array_equal(ref.conv(x3, w2, padding="same")[0, 0], [21, 32, 3])
    assert np.array_equal(rconv.conv1d(x3, w2, padding="same")[0, 0], [21, 32, 3])
    # even kernel with reflect: padded [1, 2, 3, 2]
    assert np.array_equal(rconv.conv1d(x3, w2, padding="same", padding_mode="reflect")[0, 0], [21, 32, 23])


def test_conv_hand_groups_and_bias():
    # two channels, groups=2: each output channel scales its own input channel
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    w = np.array([[[2.0]], [[10.0]]])
    b = np.array([0.5, -1.0])
    expected = [[[2.5, 4.5], [29.0, 39.0]]]
    assert np.array_equal(ref.conv(x, w, b, groups=2), expected)
    assert np.array_equal(rconv.conv1d(x, w, b, groups=2), expected)
    # groups=1 with the same two channels summed
    w1 = np.array([[[2.0], [10.0]]])
    assert np.array_equal(rconv.conv1d(x, w1), [[[32.0, 44.0]]])
    # unbatched input gives unbatched output
    assert np.array_equal(rconv.conv1d(x[0], w, b, groups=2), expected[0])


def test_conv3d_hand_box_sum():
    x = np.arange(27.0).reshape(1, 1, 3, 3, 3)
    w = np.ones((1, 1, 2, 2, 2))
    got = rconv.conv3d(x, w)
    # sum of a 2x2x2 box starting at (i,j,k): 8*x[i,j,k] + 4*(9+3+1)
    i, j, k = np.meshgrid(range(2), range(2), range(2), indexing="ij")
    expected = 8 * (9 * i + 3 * j + k) + 4 * 13
    assert np.array_equal(ref.conv(x, w)[0, 0], expected)
    assert np.array_equal(got[0, 0], expected)


# ----------------------------------------------------------------------------------------------
# NaN / inf propagation


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_nan_touches_exactly_its_windows(nd, padding_mode, dtype):
    rng = np.random.default_rng(nd * 10 + len(padding_mode))
    size = {1: 12, 2: 7, 3: 5}[nd]
    x = rng.standard_normal((2, 3) + (size,) * nd).astype(dtype)
    w = rng.standard_normal((2, 3) + (2,) * nd).astype(dtype)
    w[w == 0] = 1  # every tap nonzero
    pos = (1, 2) + tuple(int(v) for v in rng.integers(0, size, size=nd))
    x[pos] = np.nan
    kwargs = dict(padding=1, dilation=2, stride=1, padding_mode=padding_mode)
    expected = ref.conv(x, w, **kwargs)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    got = conv_fn(nd)(x, w, **kwargs)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_inf_propagation(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 6, 6)).astype(dtype)
    w = np.abs(rng.standard_normal((2, 2, 3, 3))).astype(dtype) + 0.1
    w[1] *= -1
    x[0, 0, 1, 1] = np.inf
    x[0, 1, 2, 2] = -np.inf  # windows touching both give inf - inf = NaN
    expected = ref.conv(x, w, padding=1)
    got = rconv.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    assert np.isnan(expected).any() and np.isposinf(expected).any() and np.isneginf(expected).any()
    assert_close(got, expected, dtype)


# ----------------------------------------------------------------------------------------------
# exhaustive small grids: every edge of the padding/dilation arithmetic, deterministically


def test_conv1d_exhaustive_small_grid():
    failures = []
    rng = np.random.default_rng(0)
    for size in range(1, 6):
        x = rng.standard_normal((1, 2, size))
        for k in range(1, 5):
            w = rng.standard_normal((2, 2, k))
            for d in range(1, 5):
                for p in range(0, 4):
                    for s in (1, 2, 3):
                        for mode in PADDING_MODES:
                            if size + 2 * p < d * (k - 1) + 1:
                                continue
                            if (mode == "reflect" and p >= size) or (mode == "circular" and p > size):
                                continue
                            kwargs = dict(stride=s, padding=p, dilation=d, padding_mode=mode)
                            expected = ref.conv(x, w, **kwargs)
                            try:
                                got = rconv.conv1d(x, w, **kwargs)
                            except Exception as e:  # noqa: BLE001 - collected and reported below
                                failures.append((size, k, kwargs, f"{type(e).__name__}: {e}"))
                                continue
                            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-10, atol=1e-10):
                                failures.append((size, k, kwargs, "wrong values"))
    assert not failures, f"{len(failures)} failing cases, first: {failures[:5]}"


def test_conv2d_exhaustive_small_grid():
    failures = []
    rng = np.random.default_rng(1)
    for h, w_ in ((1, 3), (3, 1), (2, 4), (4, 4)):
        x = rng.standard_normal((1, 2, h, w_))
        for kh, kw in ((1, 1), (1, 3), (3, 1), (2, 2), (3, 3)):
            w = rng.standard_normal((2, 1, kh, kw))
            for d in ((1, 1), (2, 1), (1, 3), (2, 2)):
                for p in ((0, 0), (1, 0), (0, 2), (2, 2)):
                    for s in ((1, 1), (2, 1), (1, 2)):
                        if h + 2 * p[0] < d[0] * (kh - 1) + 1 or w_ + 2 * p[1] < d[1] * (kw - 1) + 1:
                            continue
                        kwargs = dict(stride=s, padding=p, dilation=d, groups=2)
                        expected = ref.conv(x, w, **kwargs)
                        try:
                            got = rconv.conv2d(x, w, **kwargs)
                        except Exception as e:  # noqa: BLE001
                            failures.append(((h, w_), (kh, kw), kwargs, f"{type(e).__name__}: {e}"))
                            continue
                        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-10, atol=1e-10):
                            failures.append(((h, w_), (kh, kw), kwargs, "wrong values"))
    assert not failures, f"{len(failures)} failing cases, first: {failures[:5]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 19, 17, 13), (23, 19, 3, 3), dict(padding=1)),
        ((3, 37, 9, 11), (29, 37, 1, 1), dict()),
        ((1, 7, 31, 29), (65, 7, 5, 3), dict(stride=(2, 1), padding=(2, 0))),
        ((2, 24, 15, 15), (24, 1, 3, 3), dict(groups=24, padding="same", stride=2)),
        ((2, 12, 14, 10), (18, 4, 3, 3), dict(groups=3, dilation=2, padding="same", padding_mode="reflect")),
        ((2, 9, 300), (17, 9, 7), dict(padding=3, padding_mode="circular")),
        ((1, 5, 9, 8, 7), (11, 5, 3, 2, 3), dict(padding=(1, 0, 1), stride=(1, 2, 1))),
    ],
)
def test_conv_medium_odd_sizes(dtype, x_shape, w_shape, kwargs):
    # sizes that are not multiples of any SIMD width or tile: the blocking edges must be right
    rng = np.random.default_rng(len(x_shape) * 1000 + x_shape[1])
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    nd = len(x_shape) - 2
    assert_close(conv_fn(nd)(x, w, b, **kwargs), ref.conv(x, w, b, **kwargs), dtype)


def test_conv_unusual_memory_layouts():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    # zero strides (a broadcast, read-only view) are valid strides
    xb = np.broadcast_to(x[:1, :, :1], (2, 3, 6, 6))
    assert_close(rconv.conv2d(xb, w, padding=1), ref.conv(np.ascontiguousarray(xb), w, padding=1), np.float64)
    # an unaligned float64 buffer: computed right
    buf = np.zeros(x.size * 8 + 1, np.uint8)
    xu = np.ndarray(x.shape, np.float64, buffer=buf, offset=1)
    xu[...] = x
    assert not xu.flags.aligned
    assert_close(rconv.conv2d(xu, w), ref.conv(x, w), np.float64)
    # non-native byte order: either refused as a dtype error or computed right, never misread
    xs = x.astype(x.dtype.newbyteorder())
    try:
        got = rconv.conv2d(xs, w)
    except TypeError as e:
        assert "input" in str(e)
    else:
        assert_close(got.astype(np.float64), ref.conv(x, w), np.float64)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("huge", [2**40, 2**63, 2**64 - 1])
def test_strides_past_the_padded_input_give_one_position(nd, huge):
    # A stride larger than the padded input leaves one output position per dimension. A stride
    # of 2**63 in H made conv2d with a 3x3 kernel write out of bounds (a segfault); the geometry
    # now hands the kernels the padded size instead, which computes the same.
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + (6,) * nd)
    w = rng.standard_normal((4, 3) + (3,) * nd)
    conv = getattr(rconv, f"conv{nd}d")
    for d in range(nd):
        stride = tuple(huge if i == d else 1 for i in range(nd))
        got = conv(x, w, stride=stride, padding=1)
        np.testing.assert_allclose(got, ref.conv(x, w, stride=tuple(8 if i == d else 1 for i in range(nd)), padding=1), rtol=1e-12, atol=1e-12)
        dx, dw, db = getattr(rconv, f"conv{nd}d_backward")(np.ones_like(got), x, w, stride=stride, padding=1)
        assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)

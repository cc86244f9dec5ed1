"""max / avg / adaptive-avg pooling (1D, 2D, 3D) against the float64 reference, plus hand cases."""

import numpy as np
import pytest
import rconv
from hypothesis import assume, given
from hypothesis import strategies as st

import reference as ref
from helpers import DTYPES, LAYOUTS, assert_close, maybe_int, with_layout

MAX_SPATIAL = {1: 16, 2: 9, 3: 5}
MAX_KERNEL = {1: 4, 2: 3, 3: 3}
MAX_DILATION = {1: 3, 2: 2, 3: 2}
MAX_CHANNELS = {1: 6, 2: 6, 3: 4}


@st.composite
def pool_cases(draw, nd, kind):
    kernel = tuple(draw(st.integers(1, MAX_KERNEL[nd])) for _ in range(nd))
    if draw(st.booleans()):
        stride = None
        stride_t = kernel
    else:
        stride_t = tuple(draw(st.integers(1, 3)) for _ in range(nd))
        stride = maybe_int(draw, stride_t)
    pads = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    if kind == "max":
        dil = tuple(draw(st.integers(1, MAX_DILATION[nd])) for _ in range(nd))
    else:
        dil = (1,) * nd
    spatial = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), MAX_SPATIAL[nd]))
        for k, p, d in zip(kernel, pads, dil)
    )
    case = dict(
        nd=nd,
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, MAX_CHANNELS[nd])),
        unbatched=draw(st.integers(0, 4)) == 0,
        spatial=spatial,
        kernel_size=maybe_int(draw, kernel),
        stride=stride,
        padding=maybe_int(draw, pads),
        ceil_mode=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    if kind == "max":
        case["dilation"] = maybe_int(draw, dil)
        case["return_indices"] = draw(st.booleans())
    else:
        case["count_include_pad"] = draw(st.booleans())
    return case


def input_shape(case):
    shape = (case["c"],) + case["spatial"]
    return shape if case["unbatched"] else (case["n"],) + shape


def distinct_values(shape, dtype, rng):
    """Values that are pairwise distinct (also in float32), so the argmax is unique."""
    size = int(np.prod(shape))
    v = rng.permutation(size) - size / 2 + rng.uniform(0.0, 0.5, size)
    return (v * 0.5).reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# max pool


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_max_pool_matches_reference(nd, data):
    case = data.draw(pool_cases(nd, "max"), label="case")
    rng = np.random.default_rng(case["seed"])
    x = distinct_values(input_shape(case), case["dtype"], rng)
    kwargs = dict(
        kernel_size=case["kernel_size"],
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        ceil_mode=case["ceil_mode"],
    )
    exp_val, exp_idx = ref.max_pool(x, nd, **kwargs)
    # a window lying wholly in the padding has no defined argmax: not generated here
    assume((exp_idx >= 0).all())
    xv = with_layout(x, case["layout"], rng)
    fn = getattr(rconv, f"max_pool{nd}d")
    if case["return_indices"]:
        result = fn(xv, return_indices=True, **kwargs)
        assert isinstance(result, tuple) and len(result) == 2
        got, idx = result
        assert isinstance(idx, np.ndarray)
        assert idx.dtype == np.int64
        assert idx.shape == exp_idx.shape
        np.testing.assert_array_equal(idx, exp_idx)
    else:
        got = fn(xv, **kwargs)
    assert_close(got, exp_val, case["dtype"])
    # max pooling only copies values: exact equality with the input's own values
    assert np.array_equal(got, exp_val.astype(case["dtype"]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_hand_known_indices(dtype):
    x = np.array(
        [[1, 5, 2, 0], [3, 4, 8, 7], [9, 6, 1, 2], [0, 3, 5, 4]], dtype=dtype
    )[None, None]
    exp_val = [[5, 8], [9, 5]]
    exp_idx = [[1, 6], [8, 14]]
    val, idx = ref.max_pool(x, 2, 2)
    assert np.array_equal(val[0, 0], exp_val) and np.array_equal(idx[0, 0], exp_idx)
    got, got_idx = rconv.max_pool2d(x, 2, return_indices=True)
    assert got.dtype == dtype and got_idx.dtype == np.int64
    assert np.array_equal(got[0, 0], exp_val)
    assert np.array_equal(got_idx[0, 0], exp_idx)
    # without return_indices: just the array
    plain = rconv.max_pool2d(x, 2)
    assert isinstance(plain, np.ndarray) and np.array_equal(plain[0, 0], exp_val)


def test_max_pool1d_hand_cases():
    x = np.array([[[1.0, 3.0, 2.0, 5.0, 4.0]]])
    cases = [
        # kwargs, values, indices
        (dict(kernel_size=2), [3, 5], [1, 3]),
        (dict(kernel_size=2, ceil_mode=True), [3, 5, 4], [1, 3, 4]),
        (dict(kernel_size=2, stride=1, dilation=2), [2, 5, 4], [2, 3, 4]),
        (dict(kernel_size=3, stride=2, padding=1), [3, 5, 5], [1, 3, 3]),
    ]
    for kwargs, values, indices in cases:
        val, idx = ref.max_pool(x, 1, **kwargs)
        assert np.array_equal(val[0, 0], values) and np.array_equal(idx[0, 0], indices), kwargs
        got, got_idx = rconv.max_pool1d(x, return_indices=True, **kwargs)
        assert np.array_equal(got[0, 0], values), kwargs
        assert np.array_equal(got_idx[0, 0], indices), kwargs


def test_max_pool1d_hand_ceil_mode_last_window_rule():
    # in 3, k 2, s 2, p 1: ceil((3+2-2)/2)+1 = 3, but the 3rd window would start in the right
    # padding ((3-1)*2 = 4 >= in + p = 4), so it is dropped: windows [-1, 0] and [1, 2].
    x = np.array([[[1.0, 2.0, 3.0]]])
    assert ref.pool_out_size(3, 2, 2, 1, 1, True) == 2
    got, idx = rconv.max_pool1d(x, 2, stride=2, padding=1, ceil_mode=True, return_indices=True)
    assert np.array_equal(got, [[[1.0, 3.0]]])
    assert np.array_equal(idx, [[[0, 2]]])
    # in 4, k 2, s 2, p 1, ceil: 3 windows [-1,0], [1,2], [3,4]; the last hangs into padding
    x4 = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    got4 = rconv.max_pool1d(x4, 2, stride=2, padding=1, ceil_mode=True)
    assert np.array_equal(got4, [[[1.0, 3.0, 4.0]]])


def test_max_pool_ties_pick_first_in_window():
    x = np.full((1, 1, 4), 5.0)
    got, idx = rconv.max_pool1d(x, 2, return_indices=True)
    assert np.array_equal(got, [[[5.0, 5.0]]])
    assert np.array_equal(idx, [[[0, 2]]])
    x2 = np.zeros((1, 1, 2, 2))
    _, idx2 = rconv.max_pool2d(x2, 2, return_indices=True)
    assert np.array_equal(idx2, [[[[0]]]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool3d_hand_indices(dtype):
    x = np.zeros((1, 1, 2, 2, 4), dtype=dtype)
    x[0, 0, 1, 0, 1] = 7  # flat index 1*8 + 0*4 + 1 = 9, in the first window
    x[0, 0, 0, 1, 3] = 3  # flat index 0*8 + 1*4 + 3 = 7, in the second window
    x[x == 0] = -1
    got, idx = rconv.max_pool3d(x, 2, return_indices=True)
    assert got.shape == (1, 1, 1, 1, 2)
    assert np.array_equal(got.ravel(), [7, 3])
    assert np.array_equal(idx.ravel(), [9, 7])
    assert np.array_equal(ref.max_pool(x, 3, 2)[1].ravel(), [9, 7])


def test_max_pool_indices_unbatched_per_plane():
    rng = np.random.default_rng(2)
    x = distinct_values((3, 6, 6), np.float64, rng)
    got, idx = rconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    exp_val, exp_idx = ref.max_pool(x, 2, 3, stride=2, padding=1)
    assert got.shape == (3, 3, 3)
    assert np.array_equal(got, exp_val) and np.array_equal(idx, exp_idx)
    # indices are into each channel's own plane: gathering with them reproduces the values
    assert np.array_equal(np.take_along_axis(x.reshape(3, -1), idx.reshape(3, -1), 1).reshape(got.shape), got)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_propagates_exactly(nd, dtype):
    rng = np.random.default_rng(nd)
    size = {1: 12, 2: 7, 3: 5}[nd]
    x = distinct_values((2, 2) + (size,) * nd, dtype, rng)
    x[(1, 0) + (size // 2,) * nd] = np.nan
    kwargs = dict(kernel_size=3, stride=1, padding=1)
    exp_val, _ = ref.max_pool(x, nd, **kwargs)
    got = getattr(rconv, f"max_pool{nd}d")(x, **kwargs)
    assert np.isnan(exp_val).sum() == 3**nd
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp_val))
    assert np.array_equal(got, exp_val.astype(dtype), equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_infinities(dtype):
    x = np.array([[[-np.inf, -np.inf, 1.0, np.inf, -2.0, -3.0]]], dtype=dtype)
    got = rconv.max_pool1d(x, 2)
    assert np.array_equal(got, [[[-np.inf, np.inf, -2.0]]])


# ----------------------------------------------------------------------------------------------
# avg pool


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_avg_pool_matches_reference(nd, data):
    check_avg_pool_case(nd, data.draw(pool_cases(nd, "avg"), label="case"))


def check_avg_pool_case(nd, case, **extra):
    """rconv's average pool of a drawn case (and ``extra`` arguments) against the reference."""
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(input_shape(case)).astype(case["dtype"])
    kwargs = dict(
        kernel_size=case["kernel_size"],
        stride=case["stride"],
        padding=case["padding"],
        ceil_mode=case["ceil_mode"],
        count_include_pad=case["count_include_pad"],
        **extra,
    )
    expected = ref.avg_pool(x, nd, **kwargs)
    got = getattr(rconv, f"avg_pool{nd}d")(with_layout(x, case["layout"], rng), **kwargs)
    assert_close(got, expected, case["dtype"])


def test_avg_pool1d_hand_cases():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    cases = [
        (dict(kernel_size=3, stride=1, padding=1), [1, 2, 3, 7 / 3]),
        (dict(kernel_size=3, stride=1, padding=1, count_include_pad=False), [1.5, 2, 3, 3.5]),
        # ceil: windows start -1, 1, 3 and are clipped to [-1, 5): sizes 3, 3, 2
        (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), [1, 3, 2]),
        (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), [1.5, 3, 4]),
        (dict(kernel_size=2), [1.5, 3.5]),
    ]
    for kwargs, expected in cases:
        np.testing.assert_allclose(ref.avg_pool(x, 1, **kwargs)[0, 0], expected, rtol=1e-15, err_msg=str(kwargs))
        np.testing.assert_allclose(rconv.avg_pool1d(x, **kwargs)[0, 0], expected, rtol=1e-12, err_msg=str(kwargs))


def test_avg_pool1d_hand_ceil_overhang_not_counted():
    # in 5, k 2, s 2, ceil: last window [4, 6) overhangs the input with no padding: divisor 1
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    for cip in (True, False):
        np.testing.assert_allclose(ref.avg_pool(x, 1, 2, ceil_mode=True, count_include_pad=cip)[0, 0], [1.5, 3.5, 5.0])
        got = rconv.avg_pool1d(x, 2, ceil_mode=True, count_include_pad=cip)
        np.testing.assert_allclose(got[0, 0], [1.5, 3.5, 5.0], rtol=1e-12)


def test_avg_pool2d_hand_corner_divisors():
    x = np.ones((1, 1, 2, 2))
    # k 3, s 1, p 1: every window covers the whole 2x2 input (sum 4); with padding 9 cells
    got = rconv.avg_pool2d(x, 3, stride=1, padding=1)
    np.testing.assert_allclose(got, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-12)
    got = rconv.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    np.testing.assert_allclose(got, np.ones((1, 1, 2, 2)), rtol=1e-12)
    np.testing.assert_allclose(ref.avg_pool(x, 2, 3, stride=1, padding=1), np.full((1, 1, 2, 2), 4 / 9))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_nan_propagates(nd, dtype):
    rng = np.random.default_rng(nd)
    size = {1: 12, 2: 7, 3: 5}[nd]
    x = rng.standard_normal((2, 2) + (size,) * nd).astype(dtype)
    x[(0, 1) + (size // 2,) * nd] = np.nan
    expected = ref.avg_pool(x, nd, 3, stride=1, padding=1)
    got = getattr(rconv, f"avg_pool{nd}d")(x, 3, stride=1, padding=1)
    assert np.isnan(expected).sum() == 3**nd
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype)


# ----------------------------------------------------------------------------------------------
# adaptive avg pool


@st.composite
def adaptive_cases(draw, nd):
    spatial = tuple(draw(st.integers(1, MAX_SPATIAL[nd])) for _ in range(nd))
    outs = [draw(st.one_of(st.none(), st.integers(1, L + 2))) for L in spatial]
    if all(o is not None for o in outs) and len(set(outs)) == 1 and draw(st.booleans()):
        output_size = outs[0]
    else:
        output_size = tuple(outs)
        if all(o is None for o in outs) and draw(st.booleans()):
            output_size = tuple(draw(st.integers(1, L + 2)) for L in spatial)
    return dict(
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, MAX_CHANNELS[nd])),
        unbatched=draw(st.integers(0, 4)) == 0,
        spatial=spatial,
        output_size=output_size,
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_adaptive_avg_pool_matches_reference(nd, data):
    case = data.draw(adaptive_cases(nd), label="case")
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(input_shape(case)).astype(case["dtype"])
    expected = ref.adaptive_avg_pool(x, nd, case["output_size"])
    got = getattr(rconv, f"adaptive_avg_pool{nd}d")(with_layout(x, case["layout"], rng), case["output_size"])
    assert_close(got, expected, case["dtype"])


def test_adaptive_avg_pool_hand_cases():
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    # windows [0,2), [1,4), [3,5)
    np.testing.assert_allclose(ref.adaptive_avg_pool(x, 1, 3)[0, 0], [1.5, 3.0, 4.5])
    np.testing.assert_allclose(rconv.adaptive_avg_pool1d(x, 3)[0, 0], [1.5, 3.0, 4.5], rtol=1e-12)
    # output 1 = global average
    np.testing.assert_allclose(rconv.adaptive_avg_pool1d(x, 1)[0, 0], [3.0], rtol=1e-12)
    # output larger than input: windows [0,1),[0,2),[1,2) on [1, 2]
    x2 = np.array([[[1.0, 2.0]]])
    np.testing.assert_allclose(rconv.adaptive_avg_pool1d(x2, 3)[0, 0], [1.0, 1.5, 2.0], rtol=1e-12)
    # None keeps that dimension
    x3 = np.arange(12.0).reshape(1, 1, 3, 4)
    got = rconv.adaptive_avg_pool2d(x3, (None, 2))
    np.testing.assert_allclose(got[0, 0], [[0.5, 2.5], [4.5, 6.5], [8.5, 10.5]], rtol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pools_empty_batch(nd, dtype):
    x = np.zeros((0, 2) + (4,) * nd, dtype=dtype)
    for got in (
        getattr(rconv, f"max_pool{nd}d")(x, 2),
        getattr(rconv, f"avg_pool{nd}d")(x, 2),
        getattr(rconv, f"adaptive_avg_pool{nd}d")(x, 3),
    ):
        assert isinstance(got, np.ndarray) and got.dtype == dtype
    assert getattr(rconv, f"max_pool{nd}d")(x, 2).shape == (0, 2) + (2,) * nd
    assert getattr(rconv, f"adaptive_avg_pool{nd}d")(x, 3).shape == (0, 2) + (3,) * nd


# ----------------------------------------------------------------------------------------------
# exhaustive small grid over the pooling arithmetic (ceil_mode edges especially)


def test_pool1d_exhaustive_small_grid():
    failures = []
    rng = np.random.default_rng(0)
    for size in range(1, 9):
        x = distinct_values((1, 2, size), np.float64, rng)
        for k in range(1, 5):
            for p in range(0, k // 2 + 1):
                for s in (None, 1, 2, 3):
                    for ceil_mode in (False, True):
                        for d in (1, 2, 3):
                            if size + 2 * p < d * (k - 1) + 1:
                                continue
                            kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode)
                            exp_val, exp_idx = ref.max_pool(x, 1, dilation=d, **kw)
                            if (exp_idx < 0).any():
                                continue
                            try:
                                val, idx = rconv.max_pool1d(x, dilation=d, return_indices=True, **kw)
                                ok = np.array_equal(val, exp_val) and np.array_equal(idx, exp_idx)
                            except Exception as e:  # noqa: BLE001
                                ok = f"{type(e).__name__}: {e}"
                            if ok is not True:
                                failures.append(("max", size, kw, d, ok))
                        if size + 2 * p < k:
                            continue
                        for cip in (False, True):
                            expected = ref.avg_pool(x, 1, count_include_pad=cip, **kw)
                            try:
                                got = rconv.avg_pool1d(x, count_include_pad=cip, **kw)
                                ok = got.shape == expected.shape and np.allclose(got, expected, rtol=1e-12, atol=1e-12)
                            except Exception as e:  # noqa: BLE001
                                ok = f"{type(e).__name__}: {e}"
                            if ok is not True:
                                failures.append(("avg", size, kw, cip, ok))
    assert not failures, f"{len(failures)} failing cases, first: {failures[:5]}"


@pytest.mark.parametrize("nd", [2, 3])
@given(data=st.data())
def test_avg_pool_divisor_override_matches_reference(nd, data):
    # PyTorch's divisor_override: every window's sum divided by it (any nonzero int, negative too),
    # whatever count_include_pad says.
    case = data.draw(pool_cases(nd, "avg"), label="case")
    divisor = data.draw(st.integers(-9, 9).filter(bool), label="divisor_override")
    check_avg_pool_case(nd, case, divisor_override=divisor)


def test_avg_pool_divisor_override_hand_cases():
    x = np.ones((1, 1, 3, 3))
    # 2x2 windows, stride 2, padding 1: 1, 2, 2 and 4 ones, each divided by 3
    got = rconv.avg_pool2d(x, 2, padding=1, divisor_override=3)
    np.testing.assert_array_equal(got, np.array([[[[1, 2], [2, 4]]]]) / 3)
    got = rconv.avg_pool3d(np.ones((1, 1, 2, 2, 2)), 2, divisor_override=-2)
    np.testing.assert_array_equal(got, [[[[[-4.0]]]]])
    with pytest.raises(ValueError, match="divisor_override"):
        rconv.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="divisor_override"):
        rconv.avg_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2, divisor_override=0)
    with pytest.raises(TypeError, match="divisor_override"):
        rconv.avg_pool1d(np.ones((1, 1, 4)), 2, divisor_override=3)  # as PyTorch: 1-D has none

"""relu, linear, softmax, log_softmax and cross_entropy against the float64 reference."""

import math

import numpy as np
import pytest
import rconv
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from helpers import DTYPES, LAYOUTS, assert_close, with_layout

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)

common = dict(
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
)


# ----------------------------------------------------------------------------------------------
# relu


@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    with_specials=st.booleans(),
    **common,
)
def test_relu_matches_reference(shape, with_specials, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(shape), dtype=dtype)
    if with_specials and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, x.size, size=min(x.size, 4))
        flat[picks] = rng.choice(SPECIALS, size=len(picks))
        x = flat.reshape(shape)
    xv = with_layout(x, layout, rng)
    got = rconv.relu(xv)
    expected = ref.relu(x)
    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype and got.shape == x.shape
    # relu is exact: the same values (NaN where NaN) in the input's precision
    assert np.array_equal(got, expected.astype(dtype), equal_nan=True)
    assert np.array_equal(xv, x, equal_nan=True)  # input untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_hand(dtype):
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0, np.nan, np.inf, -np.inf], dtype=dtype)
    got = rconv.relu(x)
    expected = np.array([0, 0, 0, 0.5, 3.0, np.nan, np.inf, 0], dtype=dtype)
    assert got.dtype == dtype
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.isnan(rconv.relu(np.array([np.nan], dtype=dtype))[0])
    assert np.array_equal(rconv.functional.relu(x), got, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# linear


@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    in_features=st.integers(1, 8),
    out_features=st.integers(1, 8),
    bias=st.booleans(),
    w_layout=st.sampled_from(LAYOUTS),
    **common,
)
def test_linear_matches_reference(lead, in_features, out_features, bias, w_layout, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (in_features,)).astype(dtype)
    w = rng.standard_normal((out_features, in_features)).astype(dtype)
    b = rng.standard_normal(out_features).astype(dtype) if bias else None
    got = rconv.linear(with_layout(x, layout, rng), with_layout(w, w_layout, rng), b)
    assert_close(got, ref.linear(x, w, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_hand(dtype):
    x = np.array([1.0, 2.0], dtype=dtype)
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=dtype)
    b = np.array([0.0, 0.0, 1.0], dtype=dtype)
    assert np.array_equal(ref.linear(x, w, b), [1, 2, 4])
    got = rconv.linear(x, w, b)
    assert got.dtype == dtype and got.shape == (3,)
    assert np.array_equal(got, [1, 2, 4])
    got2 = rconv.linear(np.stack([x, 2 * x]), w, bias=b)
    assert np.array_equal(got2, [[1, 2, 4], [2, 4, 7]])
    assert np.array_equal(rconv.linear(x, w), [1, 2, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_larger_matches_reference(dtype):
    # big enough for a blocked GEMM path: the edges of the tiling must be right
    rng = np.random.default_rng(0)
    x = rng.standard_normal((67, 131)).astype(dtype)
    w = rng.standard_normal((45, 131)).astype(dtype)
    b = rng.standard_normal(45).astype(dtype)
    assert_close(rconv.linear(x, w, b), ref.linear(x, w, b), dtype)


def test_linear_empty_batch():
    got = rconv.linear(np.zeros((0, 4)), np.ones((3, 4)))
    assert got.shape == (0, 3) and got.dtype == np.float64


# ----------------------------------------------------------------------------------------------
# softmax / log_softmax


@st.composite
def softmax_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    ndim = len(shape)
    return dict(
        shape=shape,
        axis=draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1))),
        scale=draw(st.sampled_from([1.0, 30.0, 1000.0])),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(case=softmax_cases())
def test_softmax_family_matches_reference(op, case):
    rng = np.random.default_rng(case["seed"])
    x = (rng.standard_normal(case["shape"]) * case["scale"]).astype(case["dtype"])
    xv = with_layout(x, case["layout"], rng)
    fn = getattr(rconv, op)
    if case["axis"] is None:
        got = fn(xv)
        expected = getattr(ref, op)(x, axis=-1)
    else:
        got = fn(xv, axis=case["axis"])
        expected = getattr(ref, op)(x, axis=case["axis"])
    assert_close(got, expected, case["dtype"])
    assert np.isfinite(got).all()  # stable even for logits of magnitude ~1000


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_hand(dtype):
    x64 = np.array([0.0, math.log(2.0), math.log(3.0)])
    np.testing.assert_allclose(ref.softmax(x64), [1 / 6, 2 / 6, 3 / 6], rtol=1e-15)
    x = x64.astype(dtype)
    got = rconv.softmax(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, [1 / 6, 2 / 6, 3 / 6], rtol=1e-6 if dtype == np.float32 else 1e-12)
    # along axis 0 of a 2-D array: columns sum to one
    x2 = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=dtype)
    np.testing.assert_allclose(rconv.softmax(x2, axis=0), np.full((2, 2), 0.5), rtol=1e-6)
    np.testing.assert_allclose(rconv.softmax(x2, axis=1), [[1 / (1 + math.e), math.e / (1 + math.e)]] * 2, rtol=1e-6)
    # -inf is a masked entry: weight 0, not NaN
    masked = rconv.softmax(np.array([[-np.inf, 0.0, 0.0]], dtype=dtype))
    np.testing.assert_allclose(masked, [[0.0, 0.5, 0.5]], rtol=1e-6)
    # huge logits do not overflow
    big = rconv.softmax(np.array([1e4, 0.0, -1e4], dtype=dtype))
    np.testing.assert_allclose(big, [1.0, 0.0, 0.0], atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_hand(dtype):
    got = rconv.log_softmax(np.array([[0.0, 0.0], [1000.0, 0.0]], dtype=dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, [[-math.log(2), -math.log(2)], [0.0, -1000.0]], rtol=1e-6, atol=1e-6)
    masked = rconv.log_softmax(np.array([-np.inf, 0.0, 0.0], dtype=dtype))
    assert masked[0] == -np.inf
    np.testing.assert_allclose(masked[1:], [-math.log(2)] * 2, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# cross_entropy


@given(
    n=st.integers(1, 6),
    c=st.integers(1, 8),
    scale=st.sampled_from([1.0, 10.0, 300.0]),
    target_dtype=st.sampled_from(INT_DTYPES),
    **common,
)
def test_cross_entropy_matches_reference(n, c, scale, target_dtype, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    target = rng.integers(0, c, size=n).astype(target_dtype)
    got = rconv.cross_entropy(with_layout(logits, layout, rng), target)
    expected = np.asarray(ref.cross_entropy(logits, target))
    assert isinstance(got, np.ndarray), f"expected a 0-d ndarray, got {type(got).__name__}"
    assert got.ndim == 0
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_hand(dtype):
    logits = np.zeros((2, 2), dtype=dtype)
    target = np.array([0, 1])
    assert ref.cross_entropy(logits, target) == pytest.approx(math.log(2), rel=1e-15)
    got = rconv.cross_entropy(logits, target)
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == dtype
    assert float(got) == pytest.approx(math.log(2), rel=1e-6)
    # confident and right: ~0; confident and wrong: ~1000; mean of the two
    logits2 = np.array([[1000.0, 0.0], [1000.0, 0.0]], dtype=dtype)
    got2 = rconv.cross_entropy(logits2, np.array([0, 1], dtype=np.int32))
    assert float(got2) == pytest.approx(500.0, rel=1e-6)
    # a single class: the loss is exactly 0
    assert float(rconv.cross_entropy(np.array([[3.0]], dtype=dtype), np.array([0]))) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_of_a_0d_input(dtype):
    # PyTorch takes a 0-d tensor as one element along dim 0 (or -1): softmax 1, log_softmax 0.
    x = np.array(3.5, dtype)
    for axis in (0, -1):
        got = rconv.softmax(x, axis=axis)
        assert got.shape == () and got.dtype == dtype and got == 1.0
        got = rconv.log_softmax(x, axis=axis)
        assert got.shape == () and got.dtype == dtype and got == 0.0
    assert np.isnan(rconv.softmax(np.array(np.nan, dtype)))
    for axis in (1, -2):
        with pytest.raises(ValueError, match="axis"):
            rconv.softmax(x, axis=axis)
        with pytest.raises(ValueError, match="axis"):
            rconv.log_softmax(x, axis=axis)

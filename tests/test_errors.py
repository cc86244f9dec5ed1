"""Bad arguments raise ValueError / TypeError naming the argument; absurd sizes never crash.

One test per class of mistake. Each asserts the exception type and that the message names the
argument (pytest.raises(match=...) searches the message). A Rust panic surfacing as
pyo3_runtime.PanicException (a BaseException) fails these tests, as it should.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rconv

from helpers import mentions_shape

f32 = np.float32
f64 = np.float64


def x2d(n=1, c=3, h=5, w=5, dtype=f32):
    return np.zeros((n, c, h, w), dtype=dtype)


def w2d(k=4, c=3, kh=3, kw=3, dtype=f32):
    return np.ones((k, c, kh, kw), dtype=dtype)


def test_wrong_ndim_input():
    with pytest.raises(ValueError, match="input"):
        rconv.conv2d(np.zeros((1, 3, 5, 5, 5), f32), w2d())
    with pytest.raises(ValueError, match="input"):
        rconv.conv2d(np.zeros((5, 5), f32), w2d())
    with pytest.raises(ValueError, match="input"):
        rconv.conv1d(np.zeros((1, 3, 5, 5), f32), np.ones((4, 3, 3), f32))
    with pytest.raises(ValueError, match="input"):
        rconv.max_pool2d(np.zeros((5,), f32), 2)
    with pytest.raises(ValueError, match="input"):
        rconv.avg_pool3d(np.zeros((2, 5, 5), f32), 2)
    with pytest.raises(ValueError, match="input"):
        rconv.adaptive_avg_pool1d(np.zeros((1, 1, 4, 4), f32), 2)
    with pytest.raises(ValueError, match="logits"):
        rconv.cross_entropy(np.zeros((2, 3, 4), f32), np.zeros(2, np.int64))


def test_wrong_ndim_weight():
    with pytest.raises(ValueError, match="weight"):
        rconv.conv2d(x2d(), np.ones((4, 3, 3), f32))
    # a 1-D weight is PyTorch's (in_features,) (test_backward.py); 0-D and 3-D are not weights
    with pytest.raises(ValueError, match="weight"):
        rconv.linear(np.zeros((2, 3), f32), np.ones((), f32))
    with pytest.raises(ValueError, match="weight"):
        rconv.linear(np.zeros((2, 3), f32), np.ones((1, 4, 3), f32))


def test_channel_mismatch():
    with pytest.raises(ValueError, match="weight|groups") as info:
        rconv.conv2d(x2d(c=3), w2d(c=2))
    # the message shows the shapes involved
    msg = str(info.value)
    assert mentions_shape(msg, (1, 3, 5, 5)) or mentions_shape(msg, (4, 2, 3, 3)), msg
    with pytest.raises(ValueError, match="weight|groups"):
        rconv.conv1d(np.zeros((2, 4, 8), f64), np.ones((2, 4, 3), f64), groups=2)
    with pytest.raises(ValueError, match="weight|input|in_features"):
        rconv.linear(np.zeros((2, 5), f32), np.ones((3, 4), f32))


def test_groups_must_divide_channels():
    # C = 4 not divisible by groups = 3
    with pytest.raises(ValueError, match="groups"):
        rconv.conv2d(x2d(c=4), np.ones((6, 1, 3, 3), f32), groups=3)
    # K = 3 not divisible by groups = 2
    with pytest.raises(ValueError, match="groups"):
        rconv.conv2d(x2d(c=4), np.ones((3, 2, 3, 3), f32), groups=2)
    with pytest.raises(ValueError, match="groups"):
        rconv.conv2d(x2d(c=3), w2d(), groups=0)
    with pytest.raises(ValueError, match="groups"):
        rconv.conv2d(x2d(c=3), w2d(), groups=-1)


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="weight|kernel") as info:
        rconv.conv2d(x2d(h=3, w=3), w2d(kh=5, kw=5))
    msg = str(info.value)
    assert mentions_shape(msg, (4, 3, 5, 5)) or mentions_shape(msg, (1, 3, 3, 3)) or mentions_shape(msg, (3, 3)), msg
    # dilation makes the extent 5 > 4
    with pytest.raises(ValueError, match="weight|kernel|dilation"):
        rconv.conv2d(x2d(h=4, w=4), w2d(), dilation=2)
    # 3 + 2*1 padding = 5: a 5-wide kernel fits exactly, a 7-wide one does not
    rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 5), f32), padding=1)
    with pytest.raises(ValueError, match="weight|kernel"):
        rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 7), f32), padding=1)
    # pools: an output of size < 1
    with pytest.raises(ValueError, match="kernel_size|input|output"):
        rconv.max_pool2d(np.zeros((1, 1, 2, 2), f32), 3)
    with pytest.raises(ValueError, match="kernel_size|input|output"):
        rconv.avg_pool1d(np.zeros((1, 1, 2), f32), 3)


@pytest.mark.parametrize("bad", [0, -1, (1, 0), (2, -2)])
def test_bad_stride(bad):
    with pytest.raises(ValueError, match="stride"):
        rconv.conv2d(x2d(), w2d(), stride=bad)
    with pytest.raises(ValueError, match="stride"):
        rconv.max_pool2d(x2d(), 2, stride=bad)
    with pytest.raises(ValueError, match="stride"):
        rconv.avg_pool2d(x2d(), 2, stride=bad)


@pytest.mark.parametrize("bad", [0, -1, (1, 0)])
def test_bad_dilation(bad):
    with pytest.raises(ValueError, match="dilation"):
        rconv.conv2d(x2d(), w2d(), dilation=bad)
    with pytest.raises(ValueError, match="dilation"):
        rconv.max_pool2d(x2d(), 2, dilation=bad)


def test_bad_kernel_size_and_output_size():
    with pytest.raises(ValueError, match="kernel_size"):
        rconv.max_pool2d(x2d(), 0)
    with pytest.raises(ValueError, match="kernel_size"):
        rconv.avg_pool1d(np.zeros((1, 1, 4), f32), -2)
    with pytest.raises(ValueError, match="output_size"):
        rconv.adaptive_avg_pool2d(x2d(), 0)
    with pytest.raises(ValueError, match="output_size"):
        rconv.adaptive_avg_pool2d(x2d(), (2, 2, 2))


def test_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        rconv.conv2d(x2d(), w2d(), padding="full")
    with pytest.raises(ValueError, match="padding"):
        rconv.conv2d(x2d(), w2d(), padding=-1)
    with pytest.raises(ValueError, match="padding"):
        rconv.conv2d(x2d(), w2d(), padding=(1, 1, 1))
    # reflect needs pad < size, circular pad <= size
    with pytest.raises(ValueError, match="padding"):
        rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 1), f32), padding=3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding"):
        rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 1), f32), padding=4, padding_mode="circular")
    # the limits themselves are accepted
    rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 1), f32), padding=2, padding_mode="reflect")
    rconv.conv1d(np.zeros((1, 1, 3), f32), np.ones((1, 1, 1), f32), padding=3, padding_mode="circular")


def test_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        rconv.conv2d(x2d(), w2d(), padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode"):
        rconv.conv1d(np.zeros((1, 3, 5), f32), np.ones((4, 3, 3), f32), padding_mode="Zeros")


@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64, np.bool_, np.float16, np.complex64, np.uint8])
def test_wrong_dtype(bad_dtype):
    bad = np.zeros((1, 3, 5, 5), dtype=bad_dtype)
    with pytest.raises(TypeError, match="input"):
        rconv.conv2d(bad, w2d())
    with pytest.raises(TypeError, match="weight"):
        rconv.conv2d(x2d(), w2d().astype(bad_dtype))
    with pytest.raises(TypeError, match="input"):
        rconv.max_pool2d(bad, 2)
    with pytest.raises(TypeError, match="input"):
        rconv.avg_pool2d(bad, 2)
    with pytest.raises(TypeError, match="input"):
        rconv.adaptive_avg_pool2d(bad, 2)
    with pytest.raises(TypeError, match="input"):
        rconv.relu(bad)
    with pytest.raises(TypeError, match="input"):
        rconv.softmax(bad)
    with pytest.raises(TypeError, match="input"):
        rconv.linear(np.zeros((2, 3), bad_dtype), np.ones((4, 3), f32))
    with pytest.raises(TypeError, match="logits"):
        rconv.cross_entropy(np.zeros((2, 3), bad_dtype), np.zeros(2, np.int64))


def test_mixed_dtypes():
    with pytest.raises(TypeError, match="weight|dtype"):
        rconv.conv2d(x2d(dtype=f32), w2d(dtype=f64))
    with pytest.raises(TypeError, match="weight|dtype"):
        rconv.conv1d(np.zeros((1, 3, 5), f64), np.ones((4, 3, 3), f32))
    with pytest.raises(TypeError, match="bias"):
        rconv.conv2d(x2d(dtype=f32), w2d(dtype=f32), bias=np.zeros(4, f64))
    with pytest.raises(TypeError, match="weight|dtype"):
        rconv.linear(np.zeros((2, 3), f32), np.ones((4, 3), f64))
    with pytest.raises(TypeError, match="bias"):
        rconv.linear(np.zeros((2, 3), f64), np.ones((4, 3), f64), np.zeros(4, f32))


def test_non_ndarray_input():
    with pytest.raises(TypeError, match="input"):
        rconv.conv2d(x2d().tolist(), w2d())
    with pytest.raises(TypeError, match="weight"):
        rconv.conv2d(x2d(), w2d().tolist())
    with pytest.raises(TypeError, match="input"):
        rconv.relu(1.0)
    with pytest.raises(TypeError, match="input"):
        rconv.relu([1.0, -1.0])
    with pytest.raises(TypeError, match="input"):
        rconv.max_pool1d(None, 2)
    with pytest.raises(TypeError, match="logits"):
        rconv.cross_entropy([[0.0, 1.0]], np.zeros(1, np.int64))


def test_bias_of_wrong_shape():
    with pytest.raises(ValueError, match="bias"):
        rconv.conv2d(x2d(), w2d(k=4), bias=np.zeros(5, f32))
    with pytest.raises(ValueError, match="bias"):
        rconv.conv2d(x2d(), w2d(k=4), bias=np.zeros((4, 1), f32))
    with pytest.raises(ValueError, match="bias"):
        rconv.conv1d(np.zeros((1, 3, 5), f32), np.ones((4, 3, 3), f32), bias=np.zeros((), f32))
    with pytest.raises(ValueError, match="bias"):
        rconv.linear(np.zeros((2, 3), f32), np.ones((4, 3), f32), np.zeros(3, f32))


def test_pool_padding_more_than_half_kernel():
    with pytest.raises(ValueError, match="padding"):
        rconv.max_pool2d(x2d(), 2, padding=2)
    with pytest.raises(ValueError, match="padding"):
        rconv.max_pool1d(np.zeros((1, 1, 8), f32), 3, padding=2)
    with pytest.raises(ValueError, match="padding"):
        rconv.avg_pool1d(np.zeros((1, 1, 8), f32), 3, padding=2)
    with pytest.raises(ValueError, match="padding"):
        rconv.avg_pool3d(np.zeros((1, 1, 6, 6, 6), f32), (2, 4, 2), padding=(1, 1, 2))
    with pytest.raises(ValueError, match="padding"):
        rconv.max_pool2d(x2d(), 3, padding=-1)
    # exactly half is allowed
    rconv.max_pool2d(x2d(), 2, padding=1)
    rconv.avg_pool1d(np.zeros((1, 1, 8), f32), 4, padding=2)


def test_cross_entropy_bad_target():
    logits = np.zeros((2, 3), f32)
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy(logits, np.array([-1, 0]))
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy(logits, np.array([0, 1, 2]))  # length != N
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy(logits, np.zeros((2, 1), np.int64))  # not 1-D
    with pytest.raises(TypeError, match="target"):
        rconv.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="target"):
        rconv.cross_entropy(logits, np.array([True, False]))
    with pytest.raises(TypeError, match="target"):
        rconv.cross_entropy(logits, [0, 1])
    with pytest.raises(ValueError, match="target|logits|empty|N"):
        rconv.cross_entropy(np.zeros((0, 3), f32), np.zeros(0, np.int64))


def test_softmax_bad_axis():
    with pytest.raises(ValueError, match="axis"):
        rconv.softmax(np.zeros((2, 3), f32), axis=2)
    with pytest.raises(ValueError, match="axis"):
        rconv.log_softmax(np.zeros((2, 3), f32), axis=-3)


def test_set_num_threads_rejects_non_positive():
    before = rconv.get_num_threads()
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"(?i)thread|\bn\b"):
            rconv.set_num_threads(bad)
    assert rconv.get_num_threads() == before


# ----------------------------------------------------------------------------------------------
# absurd sizes: run in a child process so that an abort (allocation failure, panic across FFI)
# or a segfault fails the test instead of killing pytest. The child's address space is capped
# so a mistaken real allocation fails fast instead of swapping the machine.

ABSURD_CASES = {
    "conv_padding_2_40": "rconv.conv2d(np.zeros((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32), padding=2**40)",
    "conv_padding_2_62": "rconv.conv1d(np.zeros((1, 1, 4), np.float64), np.ones((1, 1, 3), np.float64), padding=2**62)",
    "conv_huge_batch": "rconv.conv2d(np.broadcast_to(np.zeros((1, 1, 4, 4), np.float32), (2**44, 1, 4, 4)), np.ones((1, 1, 3, 3), np.float32))",
    "conv3d_huge_output": "rconv.conv3d(np.zeros((1, 1, 2, 2, 2), np.float32), np.ones((2**20, 1, 1, 1, 1), np.float32), padding=2**20)",
    "relu_2_45": "rconv.relu(np.broadcast_to(np.float32(1), (2**45,)))",
    "adaptive_huge_output": "rconv.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4), np.float32), (2**31, 2**31))",
    "adaptive_overflow_output": "rconv.adaptive_avg_pool1d(np.zeros((1, 1, 4), np.float32), 2**62)",
    "max_pool_huge_batch": "rconv.max_pool2d(np.broadcast_to(np.zeros((1, 1, 4, 4), np.float64), (2**44, 2**4, 4, 4)), 2)",
    "linear_huge": "rconv.linear(np.broadcast_to(np.float32(1), (2**45, 1)), np.ones((1, 1), np.float32))",
    "softmax_huge": "rconv.softmax(np.broadcast_to(np.float64(1), (2**44, 2)))",
}

_CHILD = textwrap.dedent(
    """
    import resource, sys
    cap = 16 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import numpy as np
    import rconv
    try:
        {expr}
    except (MemoryError, ValueError) as e:
        print("RAISED", type(e).__name__, str(e)[:300])
    else:
        print("NO-ERROR")
    """
)


@pytest.mark.parametrize("name", sorted(ABSURD_CASES))
def test_absurd_sizes_raise_instead_of_crashing(name):
    code = _CHILD.format(expr=ABSURD_CASES[name])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}"
    )
    assert "RAISED MemoryError" in proc.stdout or "RAISED ValueError" in proc.stdout, (
        f"stdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}"
    )


# ----------------------------------------------------------------------------------------------
# more than 32 dimensions (NumPy 2 allows 64): rust-numpy panics making a view of such an array,
# so every array argument is checked first and refused with a ValueError naming it.

_NDIM = 33


def _deep(dtype=f32, fill=1):
    return np.full((1,) * _NDIM, fill, dtype=dtype)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="NumPy < 2 caps arrays at 32 dimensions")
def test_more_than_32_dimensions_name_the_argument():
    from rconv import nn, optim

    deep = _deep()
    cases = [
        ("input", lambda: rconv.relu(deep)),
        ("input", lambda: rconv.softmax(deep)),
        ("input", lambda: rconv.log_softmax(deep)),
        ("input", lambda: rconv.conv2d(deep, w2d(1, 1, 1, 1))),
        ("weight", lambda: rconv.conv2d(x2d(c=1), deep)),
        ("bias", lambda: rconv.conv2d(x2d(c=1), w2d(1, 1, 1, 1), bias=deep)),
        ("input", lambda: rconv.linear(deep, np.ones((1, 1), f32))),
        ("weight", lambda: rconv.linear(np.ones((1, 1), f32), deep)),
        ("input", lambda: rconv.max_pool2d(deep, 1)),
        ("input", lambda: rconv.avg_pool2d(deep, 1)),
        ("input", lambda: rconv.adaptive_avg_pool2d(deep, 1)),
        ("grad_output", lambda: rconv.relu_backward(deep, np.ones((1, 1), f32))),
        ("grad_output", lambda: rconv.max_pool1d_backward(deep, np.ones((1, 1, 2), f32), 2)),
        ("indices", lambda: rconv.max_pool1d_backward(
            np.ones((1, 1, 1), f32), np.ones((1, 1, 2), f32), 2, indices=_deep(np.int64, 0))),
        ("grad_output", lambda: rconv.linear_backward(deep, np.ones((1, 1), f32), np.ones((1, 1), f32))),
        ("logits", lambda: rconv.cross_entropy(deep, np.zeros(1, np.int64))),
        ("target", lambda: rconv.cross_entropy(np.ones((1, 2), f32), _deep(np.int64, 0))),
        ("logits", lambda: rconv.cross_entropy_backward(deep, np.zeros(1, np.int64))),
    ]
    p = nn.Parameter(deep)
    cases.append(("param", lambda: optim.SGD([p], lr=0.1).step()))
    cases.append(("param", lambda: optim.Adam([p]).step()))
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"\b{name}\b.*33 dimensions"):
            call()


# ----------------------------------------------------------------------------------------------
# shape arithmetic that overflows: an error naming the argument, or the exact answer


def test_empty_batch_whose_output_cannot_exist_names_the_argument():
    # No element to allocate, but no array can have (0, 1, 2**62, 2**62): it was an internal error.
    with pytest.raises(ValueError, match="output_size"):
        rconv.adaptive_avg_pool2d(np.ones((0, 1, 4, 4), f32), 2**62)
    with pytest.raises(ValueError, match="padding"):
        rconv.conv1d(np.zeros((0, 1, 4), f64), np.ones((1, 1, 3), f64), padding=2**62)


def test_huge_average_pool_windows_divide_by_their_true_size():
    # One window of 2**64 - 1 (half of it padding) over four ones: 4 / (2**64 - 1). The padded
    # length 4 + 2 * (2**63 - 1) wrapped to 2 and the result was 2.0.
    k = 2**64 - 1
    x = np.ones((1, 1, 4))
    got = rconv.avg_pool1d(x, k, padding=2**63 - 1, stride=k)
    assert got.shape == (1, 1, 1) and got[0, 0, 0] == 4 / float(k)
    dx = rconv.avg_pool1d_backward(np.ones((1, 1, 1)), x, k, padding=2**63 - 1, stride=k)
    assert np.all(dx == 1 / float(k))
    # 3-D, 2**30 per dimension: the divisor 2**90 saturated at 2**64 (64 / 2**64 = 3.5e-18).
    k3 = 2**30
    got = rconv.avg_pool3d(np.ones((1, 1, 4, 4, 4)), k3, padding=k3 // 2, stride=k3)
    assert got[0, 0, 0, 0, 0] == 64 / float(k3**3)
    got32 = rconv.avg_pool3d(np.ones((1, 1, 4, 4, 4), f32), k3, padding=k3 // 2, stride=k3)
    assert got32[0, 0, 0, 0, 0] == np.float32(64 / float(k3**3))

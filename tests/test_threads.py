"""Thread count control, bitwise-identical results for any thread count, GIL release."""

import hashlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rconv

import reference as ref
from helpers import DTYPES, assert_close


@pytest.fixture
def restore_threads():
    before = rconv.get_num_threads()
    yield
    rconv.set_num_threads(before)


def _arr(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def workloads(dtype):
    """name -> zero-argument call, each big enough that the work is split across threads."""
    rng = np.random.default_rng(1234)
    a = lambda *shape: _arr(rng, shape, dtype)  # noqa: E731
    x_b = a(4, 8, 16, 16)
    w_b = a(8, 8, 3, 3)
    b_b = a(8)
    x_1 = a(1, 3, 96, 96)
    w_1 = a(8, 3, 5, 5)
    x_g = a(2, 8, 20, 20)
    w_g = a(8, 2, 3, 3)
    x_dw = a(2, 16, 24, 24)
    w_dw = a(16, 1, 3, 3)
    x_pw = a(4, 32, 16, 16)
    w_pw = a(16, 32, 1, 1)
    x_1d = a(1, 4, 4096)
    w_1d = a(8, 4, 7)
    x_3d = a(2, 4, 10, 10, 10)
    w_3d = a(6, 4, 3, 3, 3)
    x_pool = a(4, 8, 32, 32)
    x_pool1 = a(1, 1, 200, 200)
    x_pool3 = a(2, 4, 12, 12, 12)
    x_lin = a(64, 256)
    w_lin = a(128, 256)
    b_lin = a(128)
    x_sm = a(64, 1000)
    x_sm0 = a(1000, 33)
    t_ce = rng.integers(0, 1000, size=64)
    x_relu = a(1_000_003)
    return {
        "conv2d_batch": lambda: rconv.conv2d(x_b, w_b, b_b, padding=1),
        "conv2d_one_sample_large": lambda: rconv.conv2d(x_1, w_1, padding=2),
        "conv2d_grouped_dilated_reflect": lambda: rconv.conv2d(
            x_g, w_g, groups=4, dilation=2, padding=2, padding_mode="reflect"
        ),
        "conv2d_depthwise_stride": lambda: rconv.conv2d(x_dw, w_dw, groups=16, stride=2, padding="same"),
        "conv2d_pointwise": lambda: rconv.conv2d(x_pw, w_pw),
        "conv1d_long": lambda: rconv.conv1d(x_1d, w_1d, padding="same", padding_mode="circular"),
        "conv3d": lambda: rconv.conv3d(x_3d, w_3d, padding=1, stride=(1, 2, 1)),
        "max_pool2d_indices": lambda: rconv.max_pool2d(x_pool, 3, 2, 1, return_indices=True),
        "max_pool2d_one_plane": lambda: rconv.max_pool2d(x_pool1, 2, return_indices=True),
        "max_pool3d": lambda: rconv.max_pool3d(x_pool3, 2, dilation=2, ceil_mode=True),
        "avg_pool2d": lambda: rconv.avg_pool2d(x_pool, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        "avg_pool2d_one_plane": lambda: rconv.avg_pool2d(x_pool1, 3, 1, 1),
        "adaptive_avg_pool2d": lambda: rconv.adaptive_avg_pool2d(x_pool, (5, 7)),
        "linear": lambda: rconv.linear(x_lin, w_lin, b_lin),
        "softmax": lambda: rconv.softmax(x_sm),
        "softmax_axis0": lambda: rconv.softmax(x_sm0, axis=0),
        "log_softmax": lambda: rconv.log_softmax(x_sm),
        "cross_entropy": lambda: rconv.cross_entropy(x_sm, t_ce),
        "relu": lambda: rconv.relu(x_relu),
    }


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_any_thread_count(dtype, restore_threads):
    calls = workloads(dtype)
    results = {}
    for threads in (1, 2, 3):
        rconv.set_num_threads(threads)
        results[threads] = {name: _as_tuple(call()) for name, call in calls.items()}
    mismatches = []
    for name in calls:
        base = results[1][name]
        for threads in (2, 3):
            other = results[threads][name]
            same = len(base) == len(other) and all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                for a, b in zip(base, other)
            )
            if not same:
                mismatches.append(f"{name}: 1 vs {threads} threads")
    assert not mismatches, mismatches


@pytest.mark.parametrize("dtype", DTYPES)
def test_multithreaded_results_are_right(dtype, restore_threads):
    # the workloads above on several threads are also correct (not just consistent)
    rconv.set_num_threads(2)
    rng = np.random.default_rng(5)
    x = _arr(rng, (4, 8, 16, 16), dtype)
    w = _arr(rng, (8, 8, 3, 3), dtype)
    b = _arr(rng, (8,), dtype)
    assert_close(rconv.conv2d(x, w, b, padding=1), ref.conv(x, w, b, padding=1), dtype)
    x1 = _arr(rng, (1, 3, 64, 64), dtype)
    w1 = _arr(rng, (8, 3, 5, 5), dtype)
    assert_close(rconv.conv2d(x1, w1, padding=2), ref.conv(x1, w1, padding=2), dtype)
    xp = _arr(rng, (1, 1, 64, 64), dtype)
    val, idx = rconv.max_pool2d(xp, 2, return_indices=True)
    exp_val, exp_idx = ref.max_pool(xp, 2, 2)
    assert np.array_equal(val, exp_val.astype(dtype)) and np.array_equal(idx, exp_idx)


def test_get_num_threads_reflects_set(restore_threads):
    for n in (1, 2, 5, 1):
        rconv.set_num_threads(n)
        assert rconv.get_num_threads() == n


def _child_threads(env_value):
    env = dict(os.environ)
    env.pop("RCONV_NUM_THREADS", None)
    if env_value is not None:
        env["RCONV_NUM_THREADS"] = env_value
    code = (
        "import hashlib, numpy as np, rconv\n"
        "print(rconv.get_num_threads())\n"
        "rng = np.random.default_rng(99)\n"
        "x = rng.standard_normal((2, 4, 20, 20)).astype(np.float32)\n"
        "w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)\n"
        "print(hashlib.sha256(rconv.conv2d(x, w, padding=1).tobytes()).hexdigest())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    threads, digest = proc.stdout.split()
    return int(threads), digest


def test_env_var_sets_threads_at_import(restore_threads):
    threads_1, digest_1 = _child_threads("1")
    assert threads_1 == 1
    threads_3, digest_3 = _child_threads("3")
    assert threads_3 == 3
    default_threads, digest_default = _child_threads(None)
    assert default_threads >= 1
    # and the child results equal this process's, on two threads
    rconv.set_num_threads(2)
    rng = np.random.default_rng(99)
    x = rng.standard_normal((2, 4, 20, 20)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    here = hashlib.sha256(rconv.conv2d(x, w, padding=1).tobytes()).hexdigest()
    assert digest_1 == digest_3 == digest_default == here


def test_gil_released_while_computing():
    """Another Python thread runs while a conv computes.

    The switch interval is made huge, so the interpreter never forces the worker to give up the
    GIL: the main thread can only run while the worker is blocked or inside a call that released
    the GIL. The worker makes exactly one rconv call and then sets `done`; the main thread counts
    loop turns until `done`. If conv2d held the GIL the count would be exactly 0.
    """
    rng = np.random.default_rng(0)
    # Long enough (about 10 ms on 2 cores) that the OS runs the main thread while both cores
    # compute: with 4 samples (2 ms) and the helper already awake from the warm-up, the call
    # sometimes ended before the main thread got a core at all (13 of 200 trials).
    x = rng.standard_normal((16, 32, 64, 64)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    rconv.conv2d(x[:1], w, padding=1)  # warm up the thread pool outside the measurement

    state = {"done": False, "error": None}

    def worker():
        try:
            rconv.conv2d(x, w, padding=1)
        except BaseException as e:  # pragma: no cover - reported below
            state["error"] = e
        state["done"] = True

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    count = 0
    try:
        t = threading.Thread(target=worker)
        t.start()
        while not state["done"]:
            count += 1
            time.sleep(0.0005)  # let the worker take the GIL back when its call returns
        t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert state["error"] is None, state["error"]
    assert count > 0, "the main thread never ran while conv2d computed: the GIL was held"


def test_thread_count_is_capped(restore_threads):
    for bad in (257, 100_000, 2**70):
        with pytest.raises(ValueError, match=r"set_num_threads: n must be between 1 and 256"):
            rconv.set_num_threads(bad)
    rconv.set_num_threads(256)
    assert rconv.get_num_threads() == 256
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    many = rconv.conv2d(x, w, padding=1)
    rconv.set_num_threads(1)
    assert many.tobytes() == rconv.conv2d(x, w, padding=1).tobytes()


@pytest.mark.parametrize(
    "value, expected, warning",
    [
        ("100000", "256", "more than the 256 threads"),
        ("257", "256", "more than the 256 threads"),
        ("four", "cpus", "not a positive integer"),
        ("0", "cpus", "not a positive integer"),
        ("-3", "cpus", "not a positive integer"),
        ("2", "2", None),
    ],
)
def test_bad_env_var_warns_and_import_still_works(value, expected, warning):
    env = dict(os.environ, RCONV_NUM_THREADS=value)
    code = (
        "import os, numpy as np, rconv\n"
        "print(rconv.get_num_threads(), len(os.sched_getaffinity(0)))\n"
        "print(float(rconv.relu(np.full(200_000, -1.0)).sum()))\n"  # a parallel call returns
    )
    for extra in ([], ["-W", "error"]):  # warnings as errors must not break the import either
        proc = subprocess.run(
            [sys.executable, *extra, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        (threads, cpus), total = (line.split() for line in proc.stdout.splitlines())
        assert threads == (cpus if expected == "cpus" else expected) and total == ["0.0"]
        if warning and not extra:
            assert "RuntimeWarning" in proc.stderr and warning in proc.stderr, proc.stderr
        if not warning:
            assert "Warning" not in proc.stderr, proc.stderr

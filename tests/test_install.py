"""The package under test is the installed wheel, and it exposes the contract's names."""

import os

import numpy as np
import pytest
import rconv

FORWARD = [
    "conv1d", "conv2d", "conv3d",
    "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "relu", "linear", "softmax", "log_softmax", "cross_entropy",
]


def test_imported_from_installed_wheel():
    if os.environ.get("RCONV_ALLOW_SOURCE_TREE"):
        pytest.skip("RCONV_ALLOW_SOURCE_TREE is set")
    assert "site-packages" in rconv.__file__, rconv.__file__
    native = rconv._rconv.__file__
    assert "site-packages" in native, native


@pytest.mark.parametrize("name", FORWARD + ["set_num_threads", "get_num_threads"])
def test_forward_names_exported(name):
    assert callable(getattr(rconv, name))
    if name not in ("set_num_threads", "get_num_threads"):
        assert callable(getattr(rconv.functional, name))


def test_functional_matches_top_level():
    x = np.linspace(-1, 1, 2 * 3 * 6 * 6).reshape(2, 3, 6, 6)
    w = np.linspace(1, -1, 4 * 3 * 3 * 3).reshape(4, 3, 3, 3)
    assert np.array_equal(rconv.conv2d(x, w, padding=1), rconv.functional.conv2d(x, w, padding=1))
    assert np.array_equal(rconv.max_pool2d(x, 2), rconv.functional.max_pool2d(x, 2))
    assert np.array_equal(rconv.softmax(x, axis=1), rconv.functional.softmax(x, axis=1))

"""The benchmark command (``python -m rconv bench``, ``rconv.bench``): it runs, writes its JSON,
checks every result it times, catches wrong results, and treats missing peers as skipped.

Kept fast (a few seconds): small entries, ``--quick``, and no peer unless a test is about peers.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rconv
from rconv import bench


def _run_main(argv, monkeypatch=None):
    out = io.StringIO()
    status = bench.main(list(argv), out=out)
    return status, out.getvalue()


def _rows(doc, entry):
    (res,) = [e for e in doc["entries"] if e["entry"] == entry]
    return {r["pass"]: r for r in res["rows"]}


# ---- the command, end to end


def test_quick_run_writes_checked_json(tmp_path):
    path = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rconv", "bench", "--quick", "--entries", "lenet_c2,maxpool_2x2",
         "--against", "none", "--json", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "command: python -m rconv bench --quick --entries lenet_c2,maxpool_2x2" in out
    assert "machine: " in out and "threads: 2" in out
    assert "FAIL" not in out

    doc = json.loads(path.read_text())
    assert doc["ok"] is True and doc["failures"] == []
    assert doc["threads"] == 2 and doc["repeat"] == 2 and doc["quick"] is True
    assert doc["machine"]["cpu"] and doc["machine"]["cores"] >= 1
    assert doc["versions"]["rconv"] == rconv.__version__
    assert [e["entry"] for e in doc["entries"]] == ["lenet_c2", "maxpool_2x2"]

    conv = _rows(doc, "lenet_c2")
    pool = _rows(doc, "maxpool_2x2")
    for rows, unit in ((conv, "GFLOP/s"), (pool, "GB/s")):
        assert set(rows) == {"forward", "forward+backward"}
        for row in rows.values():
            r = row["results"]["rconv"]
            assert r["ms"] > 0 and r[unit] > 0 and r["repetitions"] >= 2
            assert set(row["results"]) == {"rconv"}  # --against none
            # The output checks ran (independent NumPy ones here) and passed.
            assert row["checks"] and row["ok"]
            assert all(c["ok"] for c in row["checks"])
            assert any(c["against"].startswith("numpy") for c in row["checks"])
    # flops = 2 * output elements * (C / groups) * kernel volume; fwd+bwd counts 3x.
    flops = 2 * (64 * 16 * 10 * 10) * 6 * 25
    assert conv["forward"]["work"] == flops and conv["forward+backward"]["work"] == 3 * flops
    # bytes = float32 input read + output written.
    assert pool["forward"]["work"] == 4 * (32 * 64 * 112 * 112 + 32 * 64 * 56 * 56)
    whats = {c["what"] for c in conv["forward+backward"]["checks"]}
    assert {"grad_input", "grad_weight", "grad_bias"} <= whats


def test_unknown_entry_or_peer_is_a_usage_error():
    status, _ = _run_main(["--entries", "no_such_entry"])
    assert status == 2
    status, _ = _run_main(["--against", "tensorflow", "--entries", "lenet_c2"])
    assert status == 2


# ---- wrong results are caught


def test_compare_reports_a_perturbed_array():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 5, 6)).astype(np.float32)
    assert bench.compare(ref.copy(), ref).ok
    # Rounding-level noise passes: rtol 1e-4, atol 1e-4 * max|ref|.
    noisy = ref * (1 + np.float32(1e-6) * rng.standard_normal(ref.shape).astype(np.float32))
    assert bench.compare(noisy, ref).ok

    bad = ref.copy()
    bad[1, 2, 3] += 0.01 * np.abs(ref).max()
    check = bench.compare(bad, ref, what="output", against="torch")
    assert not check.ok
    assert "(1, 2, 3)" in check.describe() and "1 of 120 elements differ" in check.describe()

    assert not bench.compare(ref[:, :, :5], ref).ok  # shape
    nan = ref.copy()
    nan[0, 0, 0] = np.nan
    assert not bench.compare(nan, ref).ok


def test_numpy_checks_agree_with_rconv_and_catch_errors():
    # Odd parameters (stride 2, padding, groups, 1-D and 3-D) against rconv itself.
    for e in (
        dict(name="t2", dims=2, N=2, C=4, spatial=[9, 7], K=6, kernel=[3, 2], stride=2, padding=1, groups=2),
        dict(name="t1", dims=1, N=3, C=3, spatial=[11], K=2, kernel=[4], stride=3, padding=2, groups=1),
        dict(name="t3", dims=3, N=1, C=2, spatial=[4, 5, 6], K=3, kernel=[2, 3, 2], stride=1, padding=1, groups=1),
    ):
        case = bench.ConvCase.from_suite(e)
        x, w, b, gy = case.data(0)
        kw = dict(stride=case.stride, padding=case.padding, groups=case.groups)
        y = getattr(rconv, f"conv{case.dims}d")(x, w, b, **kw)
        gx, gw, gb = getattr(rconv, f"conv{case.dims}d_backward")(gy, x, w, **kw)
        assert all(c.ok for c in bench.numpy_conv_forward_checks(case, x, w, b, y, samples=200))
        assert all(c.ok for c in bench.numpy_conv_backward_checks(case, x, w, b, y, gy, gx, gw, gb, samples=200))

        wrong = y.copy()
        wrong.reshape(-1)[::7] += 0.05
        assert not all(c.ok for c in bench.numpy_conv_forward_checks(case, x, w, b, wrong, samples=200))
        # Flipped kernels: a classic backward bug.
        flipped = gx[..., ::-1].copy()
        checks = bench.numpy_conv_backward_checks(case, x, w, b, y, gy, flipped, gw, gb, samples=200)
        assert not all(c.ok for c in checks if c.what == "grad_input")

    for op in ("max", "avg"):
        case = bench.PoolCase.from_suite(
            dict(name="p", op=op, dims=2, shape=[2, 3, 9, 8], kernel=3, stride=2, padding=1))
        x, gy = case.data(0)
        y = getattr(rconv, f"{op}_pool2d")(x, 3, stride=2, padding=1)
        gx = getattr(rconv, f"{op}_pool2d_backward")(gy, x, 3, stride=2, padding=1)
        assert all(c.ok for c in bench.numpy_pool_forward_checks(case, x, y, samples=200))
        assert all(c.ok for c in bench.numpy_pool_backward_checks(case, x, y, gy, gx, samples=200))
        assert not all(c.ok for c in bench.numpy_pool_forward_checks(case, x, y * 1.01 + 0.01, samples=200))
        assert not all(c.ok for c in bench.numpy_pool_backward_checks(case, x, y, gy, gx * 1.01, samples=200))


def test_a_wrong_rconv_result_fails_the_command(monkeypatch, tmp_path):
    real_conv, real_backward = rconv.conv2d, rconv.conv2d_backward

    def conv_off_by_a_bit(*args, **kwargs):
        y = real_conv(*args, **kwargs)
        y[0, 0, 0, 0] += 1.0  # one element, at a corner the sampled checks always visit
        return y

    monkeypatch.setattr(rconv, "conv2d", conv_off_by_a_bit)
    path = tmp_path / "b.json"
    status, out = _run_main(["--quick", "--entries", "lenet_c2", "--against", "none", "--json", str(path)])
    assert status == 1
    assert "FAIL lenet_c2 forward: output vs numpy" in out
    doc = json.loads(path.read_text())
    assert doc["ok"] is False and doc["failures"]
    assert _rows(doc, "lenet_c2")["forward"]["ok"] is False

    monkeypatch.setattr(rconv, "conv2d", real_conv)

    def backward_scaled(*args, **kwargs):
        gx, gw, gb = real_backward(*args, **kwargs)
        return gx, gw * np.float32(1.001), gb

    monkeypatch.setattr(rconv, "conv2d_backward", backward_scaled)
    status, out = _run_main(["--quick", "--entries", "lenet_c2", "--against", "none"])
    assert status == 1
    assert "FAIL lenet_c2 forward+backward: grad_weight" in out


# ---- peers


def test_missing_peers_are_skipped_not_errors(monkeypatch, tmp_path):
    # An import of a module set to None in sys.modules raises ImportError: "not installed".
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    path = tmp_path / "b.json"
    status, out = _run_main(["--quick", "--entries", "lenet_c2", "--against", "torch,onnxruntime",
                             "--json", str(path)])
    assert status == 0, out
    assert "note: torch: not installed" in out and "note: onnxruntime: not installed" in out
    doc = json.loads(path.read_text())
    assert doc["peers"]["torch"]["available"] is False
    assert doc["peers"]["onnxruntime"]["available"] is False
    rows = _rows(doc, "lenet_c2")
    assert set(rows["forward"]["results"]) == {"rconv"} and rows["forward"]["ok"]


def test_onnxruntime_without_onnx_is_skipped(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnx", None)
    peer = bench.load_peer("onnxruntime", 2)
    assert not peer.available and "onnx" in peer.note


def test_torch_peer_is_compared_when_installed(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    status, out = _run_main(["--quick", "--entries", "lenet_c2", "--against", "torch", "--json", str(path)])
    assert status == 0, out
    rows = _rows(json.loads(path.read_text()), "lenet_c2")
    for row in rows.values():
        assert row["results"]["torch"]["ms"] > 0
        assert row["results"]["torch"]["ratio_rconv_over_peer"] > 0
        assert any(c["against"] == "torch" and c["ok"] for c in row["checks"])
    assert {c["what"] for c in rows["forward+backward"]["checks"] if c["against"] == "torch"} == {
        "grad_input", "grad_weight", "grad_bias"}


# ---- training entry


def test_train_is_skipped_without_rconv_nn(monkeypatch):
    monkeypatch.delattr(rconv, "nn", raising=False)
    monkeypatch.setitem(sys.modules, "rconv.nn", None)
    status, out = _run_main(["--quick", "--entries", "train", "--against", "none"])
    assert status == 0, out
    assert "train: skipped (rconv.nn not available)" in out


def test_peak_memory_sees_a_large_allocation():
    mem = bench.PeakMemory()
    if not mem.available:
        pytest.skip("peak memory needs Linux /proc/self/clear_refs")
    for _ in range(2):  # the second time, glibc may reuse the first array's memory
        mib = mem.measure(lambda: np.ones(16 * 2**20 // 4, dtype=np.float32))
        assert 15.5 <= mib <= 20


def test_suite_is_shipped_with_the_package():
    suite = bench.load_suite()
    names = [e["name"] for kind in ("conv", "pool", "train") for e in suite[kind]]
    assert "lenet_c2" in names and "maxpool_2x2" in names and "lenet5_mnist_shape" in names
    assert os.path.dirname(bench.SUITE_PATH).endswith(os.path.join("rconv", "data"))


def test_thread_scaling_times_one_and_n_threads_and_restores_the_count():
    entry = {"name": "small", "dims": 2, "N": 2, "C": 4, "spatial": [12, 12], "K": 4, "kernel": [3, 3],
             "stride": 1, "padding": 1, "groups": 1}
    settings = bench.Settings(threads=2, repeat=2, cap_s=1.0, quick=True, peers={}, memory=bench.PeakMemory())
    before = rconv.get_num_threads()
    rconv.set_num_threads(3)
    try:
        result = bench.run_scaling(entry, settings, seed=0)
        assert rconv.get_num_threads() == 3
    finally:
        rconv.set_num_threads(before)
    assert result["entry"] == "small" and result["threads"] == [1, 2]
    for p in ("fwd", "fwd+bwd"):
        r = result[p]
        assert r["ms_1_thread"] > 0 and r["ms_2_threads"] > 0
        assert r["speedup"] == pytest.approx(r["ms_1_thread"] / r["ms_2_threads"])

"""Running out of memory inside a kernel raises MemoryError; it never aborts the process.

Each case runs in a child process that allocates its arrays, forces one kernel strategy, caps
its address space (RLIMIT_AS) a little above what it already uses, and calls a convolution whose
scratch buffers (packed or transposed weights, Winograd's transformed weights, per-chunk
partial gradients, accumulators) need more than that headroom while its inputs and outputs fit.
The call must raise MemoryError naming the buffer; with the cap lifted, the same call must then
succeed and agree with im2col (no state left behind). Before scratch buffers were allocated
fallibly these children died with SIGABRT ("memory allocation of N bytes failed").
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rconv

MiB = 2**20

# name: (direction, strategy, setup code defining x, w, dy (or None) and kw, headroom in MiB)
CASES = {
    # The case: a 1x1 convolution with a 64 MiB weight and 40 MiB of headroom (im2col
    # transposes the weights once per call).
    "im2col_forward_pointwise": ("forward", "im2col", "x = rnd(1, 4096, 2, 2); w = rnd(4096, 4096, 1, 1); dy = None; kw = {}", 40),
    # Winograd's transformed weights are 4x the weights (36 points against 9 taps).
    "winograd_forward": ("forward", "winograd", "x = rnd(1, 1024, 4, 4); w = rnd(1024, 1024, 3, 3); dy = None; kw = dict(padding=1)", 64),
    "winograd_input": ("input", "winograd", "x = rnd(1, 1024, 4, 4); w = rnd(1024, 1024, 3, 3); dy = rnd(1, 1024, 4, 4); kw = dict(padding=1)", 64),
    # The direct loops pack the weights in blocks of output channels.
    "direct_forward": ("forward", "direct", "x = rnd(1, 512, 8, 8); w = rnd(512, 512, 8, 8); dy = None; kw = {}", 40),
    "direct_forward_strided": ("forward", "direct", "x = rnd(1, 512, 16, 16); w = rnd(512, 512, 8, 8); dy = None; kw = dict(stride=2)", 40),
    "direct_input": ("input", "direct", "x = rnd(1, 512, 8, 8); w = rnd(512, 512, 8, 8); dy = rnd(1, 512, 1, 1); kw = {}", 40),
    # The direct weight gradient keeps one vector of lanes per weight.
    "direct_weight": ("weight", "direct", "x = rnd(2, 128, 12, 12); w = rnd(128, 128, 11, 11); dy = rnd(2, 128, 2, 2); kw = {}", 40),
    # im2col's weight gradient keeps one partial gradient per sample chunk (16 MiB at most).
    "im2col_weight": ("weight", "im2col", "x = rnd(8, 256, 3, 3); w = rnd(512, 256, 2, 2); dy = rnd(8, 512, 2, 2); kw = {}", 8),
    # The depthwise weight gradient keeps a vector of lanes per tap.
    "depthwise_weight": ("weight", "depthwise", "x = rnd(1, 1, 1200, 1200); w = rnd(1, 1, 1200, 1200); dy = rnd(1, 1, 1, 1); kw = {}", 24),
}

_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import rconv
    native = rconv._rconv

    def rnd(*shape):
        return np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    def call():
        nd = x.ndim - 2
        if direction == "forward":
            return [getattr(rconv, f"conv{{nd}}d")(x, w, **kw)]
        dx, dw, db = getattr(rconv, f"conv{{nd}}d_backward")(dy, x, w, **kw)
        return [dx] if direction == "input" else [dw, db]

    direction, strategy, headroom = {direction!r}, {strategy!r}, {headroom} * 2**20
    {setup}
    # Outputs and the thread pool first, so that the cap only leaves room for scratch buffers.
    native._force_conv_strategy(direction, "im2col")
    want = call()
    native._force_conv_strategy(direction, strategy)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, hard))
    try:
        call()
    except MemoryError as e:
        print("RAISED MemoryError", str(e)[:300])
    else:
        print("NO-ERROR")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    got = call()
    for g, wnt in zip(got, want):
        scale = max(1.0, float(np.abs(wnt).max()))
        np.testing.assert_allclose(g, wnt, rtol=1e-3, atol=1e-3 * scale)
    print("AFTER OK")
    """
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scratch_allocation_failure_raises_memory_error(name):
    direction, strategy, setup, headroom = CASES[name]
    served = rconv._rconv._conv_strategies
    if strategy == "direct" and "direct" not in served((1, 2, 5, 5), (2, 2, 3, 3))["forward"]:
        pytest.skip("the direct loops need AVX2 or AVX-512")
    code = _CHILD.format(direction=direction, strategy=strategy, headroom=headroom, setup=setup)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    )
    assert "RAISED MemoryError" in proc.stdout, f"stdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}"
    assert "AFTER OK" in proc.stdout, proc.stdout


def test_memory_error_names_the_buffer():
    # The message says what could not be allocated (a scratch buffer, not the user's arrays).
    code = _CHILD.format(direction="forward", strategy="im2col", headroom=40, setup=CASES["im2col_forward_pointwise"][2])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "cannot allocate im2col transposed weights" in proc.stdout, proc.stdout + proc.stderr[-2000:]

"""rconv and the life of the process: interpreter exit with a thread inside a call, fork, Ctrl-C.

Each scenario runs in a child interpreter (subprocess), so that a crash or a hang fails the test
through the child's exit status or a timeout instead of taking pytest down with it.
"""

import os
import subprocess
import sys

import pytest


def _run(code, *args, timeout=120, env_extra=None):
    env = dict(os.environ)
    env.pop("RCONV_NUM_THREADS", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


# A daemon thread loops on rconv calls while the main thread ends the program. CPython 3.11
# ends such a thread with pthread_exit when it takes the GIL back during finalization; that
# used to unwind through rconv's frames and crash (SIGSEGV in 8 of 8 runs).
DAEMON_AT_EXIT = """
import sys, threading, time
import numpy as np, rconv
rconv.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
def loop():
    while True:
        rconv.conv2d(x, w, padding=1)
        rconv.relu(x)
for _ in range(2):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.1)
"""


def test_daemon_threads_inside_calls_at_interpreter_exit():
    for run in range(8):
        threads = 1 + run % 2
        proc = _run(DAEMON_AT_EXIT, threads, timeout=60)
        assert proc.returncode == 0, f"run {run} ({threads} threads): exit status {proc.returncode}\n{proc.stderr}"


# An atexit callback registered before rconv's runs after it, on the exiting thread: its calls
# still compute (only other threads are parked once Python exits).
CALL_AFTER_EXIT_MARK = """
import atexit
def late():
    import numpy as np, rconv
    print(float(rconv.relu(np.array([-1.0, 2.5])).sum()))
atexit.register(late)
import rconv
"""


def test_calls_from_late_atexit_callbacks_still_compute():
    proc = _run(CALL_AFTER_EXIT_MARK, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2.5"]

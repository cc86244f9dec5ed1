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


# Threads inside rconv calls while the main thread forks, 300 times; each child makes one
# parallel call (the conv takes the pool's locks), checks it, and reads the allocator's cache. A child that inherited a lock
# held by a parent thread blocked forever (6 of 300 forks before the fix, 17 of 300 with this
# load). A child that does not finish within CHILD_TIMEOUT counts as hung; the first one ends
# the run.
FORK_WHILE_COMPUTING = """
import os, signal, sys, threading, time, warnings
import numpy as np, rconv
warnings.simplefilter("ignore")  # Python 3.12+ warns about fork with threads running
rconv.set_num_threads(int(sys.argv[1]))
forks, child_timeout = int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 32, 32)).astype(np.float32)
w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
expected = rconv.conv2d(x, w, padding=1).tobytes()
busy_input = rng.standard_normal(70_000).astype(np.float32)
def busy():
    while True:
        rconv.relu(busy_input)  # short parallel calls: the pool's locks are taken all the time
for _ in range(4):
    threading.Thread(target=busy, daemon=True).start()
for i in range(forks):
    pid = os.fork()
    if pid == 0:
        right = rconv.conv2d(x, w, padding=1).tobytes() == expected
        rconv._rconv._cached_memory_bytes()  # the allocator's cache lock
        os._exit(0 if right else 3)
    deadline = time.monotonic() + child_timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                sys.exit(f"fork {i}: the child exited with {code}")
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit(f"fork {i}: the child hung")
        time.sleep(0.0005)
print("ok")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_fork_while_other_threads_compute(threads):
    proc = _run(FORK_WHILE_COMPUTING, threads, 300, 5.0, timeout=600)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok"], proc.stderr

//! What the bindings need to know about the interpreter around a call: whether Python is
//! exiting, so that a thread finishing a call must not take the GIL back, and which thread is
//! the main one, the only one on which Python runs signal handlers.
//!
//! Signals: a long call on the main thread would hold Ctrl-C back until it returned (2.45 s
//! for a 2.3 s call). `compute` installs `signal_raised` as the call's interrupt check
//! (`parallel::with_interrupt_check`): every 10 ms at most, between work items, the thread
//! takes the GIL for a moment and runs the handlers of the signals that have arrived; the
//! exception a handler raises stops the call and is what it returns. Only the main thread
//! checks: elsewhere Python runs no handlers, and taking the GIL would only cost. Nor does a
//! check take the GIL once Python is exiting, except on the exiting thread (see below).
//!
//! Exit: during finalization CPython < 3.14 ends a thread that takes the GIL back with
//! `pthread_exit`, whose forced unwind then runs through the Rust frames of the call. PyO3
//! parks the thread instead (a guard in `PyEval_RestoreThread`), but that relies on the unwind
//! reaching its guard, and in the wheel it never does: maturin links with zig, which replaces
//! libgcc_s with a static LLVM libunwind, so the unwind (driven by glibc through libgcc_s) calls
//! Rust's personality routine, which reads the frame through the other unwinder and jumps to a
//! wild address (SIGSEGV at exit in 8 of 8 runs with a daemon thread looping on conv2d). So a
//! thread must not reach `take_gil` once finalization can begin. An `atexit` callback (it runs
//! before finalization, with the GIL) marks Python as exiting; from then on a thread other than
//! the exiting one that finishes a call parks for good before it takes the GIL back, as CPython
//! 3.14 does with such threads. A thread already on its way back (counted in `REATTACHING`
//! before it looks at the mark) is let through first: the callback releases the GIL and waits
//! for it, so no thread is left waiting for the GIL inside an rconv call when finalization
//! begins. (Not covered: a thread that runs Python code while it holds the GIL inside rconv, a
//! `__del__` called by a garbage collection during argument conversion, at that very moment.)

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Set by the `atexit` callback: Python is exiting.
static EXITING: AtomicBool = AtomicBool::new(false);
/// The thread that ran the `atexit` callback: it finalizes Python and may still make calls.
static EXIT_THREAD: AtomicU64 = AtomicU64::new(0);
/// Threads between the end of a call's computation and holding the GIL again.
static REATTACHING: AtomicUsize = AtomicUsize::new(0);
/// Python's main thread (`threading.main_thread()`; after `os.fork`, the thread that forked).
static MAIN_THREAD: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The exception a signal handler raised during this thread's call, for `compute` to return.
    static SIGNAL_ERROR: RefCell<Option<PyErr>> = const { RefCell::new(None) };
}

/// The longest the `atexit` callback waits for threads on their way back into Python. They need
/// only the GIL, which the callback releases, so they take microseconds; the bound keeps a
/// thread that never gets the GIL from holding up the exit.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// This thread's id as Python counts threads (`threading.get_ident()`).
fn thread_ident() -> u64 {
    // SAFETY: PyThread_get_thread_ident only reads the calling thread's id (pthread_self); it
    // needs neither the GIL nor an initialized interpreter.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() as u64 }
}

/// Whether the calling thread is Python's main thread.
pub(crate) fn is_main_thread() -> bool {
    thread_ident() == MAIN_THREAD.load(Ordering::Relaxed)
}

/// The interrupt check of a call on the main thread (detached): takes the GIL and runs the
/// handlers of the signals that have arrived; true, with the exception kept for
/// `take_signal_error`, when one raises.
pub(crate) fn signal_raised() -> bool {
    if EXITING.load(Ordering::SeqCst) && thread_ident() != EXIT_THREAD.load(Ordering::SeqCst) {
        return false;
    }
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(err) => {
            SIGNAL_ERROR.with(|e| *e.borrow_mut() = Some(err));
            true
        }
    })
}

/// The exception that stopped this thread's call (see `signal_raised`).
pub(crate) fn take_signal_error() -> PyErr {
    SIGNAL_ERROR
        .with(|e| e.borrow_mut().take())
        .unwrap_or_else(|| PyKeyboardInterrupt::new_err("the call was interrupted"))
}

/// Called on a detached thread whose computation has ended, just before it takes the GIL back;
/// `reattached` must follow once it holds the GIL. Once Python is exiting, a thread other than
/// the exiting one never returns from here.
pub(crate) fn before_reattach() {
    REATTACHING.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) && thread_ident() != EXIT_THREAD.load(Ordering::SeqCst) {
        REATTACHING.fetch_sub(1, Ordering::SeqCst);
        // Its result is dropped with the thread: the process is ending and nothing waits for it.
        loop {
            std::thread::park();
        }
    }
}

/// Called once the thread that passed `before_reattach` holds the GIL again.
pub(crate) fn reattached() {
    REATTACHING.fetch_sub(1, Ordering::SeqCst);
}

/// The `atexit` callback: marks Python as exiting and lets the threads already on their way
/// back into Python through (see the module doc). Later `atexit` callbacks, `__del__` methods
/// and the like on this thread still compute as usual.
#[pyfunction]
fn _at_exit(py: Python<'_>) {
    EXIT_THREAD.store(thread_ident(), Ordering::SeqCst);
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let start = Instant::now();
        while REATTACHING.load(Ordering::SeqCst) != 0 && start.elapsed() < EXIT_DRAIN {
            std::thread::sleep(Duration::from_micros(100));
        }
    });
}

/// `os.register_at_fork(after_in_child=...)`: the forking thread is the child's only thread,
/// so none is on its way back into Python, and its main thread.
#[pyfunction]
fn _after_fork_in_child() {
    REATTACHING.store(0, Ordering::SeqCst);
    MAIN_THREAD.store(thread_ident(), Ordering::Relaxed);
}

/// Records the main thread and registers the `atexit` and fork callbacks (at import).
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let main: u64 = py.import("threading")?.call_method0("main_thread")?.getattr("ident")?.extract()?;
    MAIN_THREAD.store(main, Ordering::Relaxed);
    py.import("atexit")?.call_method1("register", (wrap_pyfunction!(_at_exit, m)?,))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", wrap_pyfunction!(_after_fork_in_child, m)?)?;
    if let Ok(register_at_fork) = py.import("os")?.getattr("register_at_fork") {
        register_at_fork.call((), Some(&kwargs))?;
    }
    Ok(())
}

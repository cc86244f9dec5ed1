//! The thread pool every operation runs on, and the thread count.
//!
//! rconv owns one rayon pool (not rayon's global one) so that `set_num_threads` can resize it at
//! any time. The work split of every kernel depends only on the problem's shape, never on the
//! number of threads, so results are bitwise identical for any thread count.
//!
//! Fork safety: a child process made by `fork()` inherits the pool's bookkeeping but none of its
//! threads, so waiting on it would hang forever. The pool remembers the process id it was built
//! in; a call from another process builds a fresh pool and leaks the dead one (its threads do
//! not exist in the child, so there is nothing to join).

use crate::error::{Error, Result};
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex, MutexGuard};

/// Environment variable read for the default thread count.
pub const NUM_THREADS_ENV: &str = "RCONV_NUM_THREADS";

struct PoolState {
    /// The requested thread count; 0 until first use (then the default is resolved).
    threads: usize,
    /// The pool and the id of the process that built it.
    pool: Option<(u32, Arc<ThreadPool>)>,
}

static STATE: Mutex<PoolState> = Mutex::new(PoolState { threads: 0, pool: None });

fn lock() -> MutexGuard<'static, PoolState> {
    // A panic while holding the lock cannot leave PoolState inconsistent (each field is written
    // whole), so a poisoned lock is still usable.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The default: `RCONV_NUM_THREADS` if it holds a positive integer, else the number of CPUs.
fn default_threads() -> usize {
    std::env::var(NUM_THREADS_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Sets the number of threads used by every later call (at least 1).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("n", "set_num_threads: n must be at least 1, got 0"));
    }
    let mut state = lock();
    if state.threads != n {
        state.threads = n;
        state.pool = None;
    }
    Ok(())
}

/// The number of threads calls run on.
pub fn get_num_threads() -> usize {
    let mut state = lock();
    if state.threads == 0 {
        state.threads = default_threads();
    }
    state.threads
}

/// Re-reads `RCONV_NUM_THREADS` (the Python module calls this at import).
pub fn init_from_env() {
    let mut state = lock();
    state.threads = default_threads();
    state.pool = None;
}

fn pool() -> Arc<ThreadPool> {
    let mut state = lock();
    if state.threads == 0 {
        state.threads = default_threads();
    }
    let pid = std::process::id();
    if let Some((owner, pool)) = &state.pool {
        if *owner == pid {
            return Arc::clone(pool);
        }
        // Built before a fork: its threads do not exist here. Leak it rather than drop it, as
        // dropping would try to signal threads that are gone.
        if let Some((_, dead)) = state.pool.take() {
            std::mem::forget(dead);
        }
    }
    let built = ThreadPoolBuilder::new()
        .num_threads(state.threads)
        .thread_name(|i| format!("rconv-{i}"))
        .build()
        .map(Arc::new);
    match built {
        Ok(pool) => {
            state.pool = Some((pid, Arc::clone(&pool)));
            pool
        }
        // The OS refused threads: run on a pool of one rather than fail the call.
        Err(_) => Arc::new(ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool")),
    }
}

/// Runs `f` on rconv's pool (rayon calls inside it use that pool).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() && in_rconv_pool() {
        return f();
    }
    pool().install(f)
}

/// Work (in element operations) below which a call runs on the calling thread: waking the pool
/// costs ~15 us, more than the whole of such a call.
pub const INLINE_WORK: usize = 1 << 16;

/// Whether work of this size is worth handing to the pool.
fn worth_parallel(items: usize, work: usize) -> bool {
    items > 1 && work >= INLINE_WORK && get_num_threads() > 1
}

/// Calls `f(i)` for every `i < items`, in parallel on rconv's pool when the total `work` is
/// worth it, else in order on the calling thread. Items must be independent; since each item
/// computes the same either way, results never depend on the thread count.
pub fn for_each<F: Fn(usize) + Sync + Send>(items: usize, work: usize, f: F) {
    if worth_parallel(items, work) {
        install(|| (0..items).into_par_iter().for_each(f));
    } else {
        (0..items).for_each(f);
    }
}

/// As `for_each`, with a scratch value made by `init` for each worker (or once when inline).
pub fn for_each_init<S, I, F>(items: usize, work: usize, init: I, f: F)
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize) + Sync + Send,
{
    if worth_parallel(items, work) {
        install(|| (0..items).into_par_iter().for_each_init(&init, &f));
    } else {
        let mut scratch = init();
        (0..items).for_each(|i| f(&mut scratch, i));
    }
}

/// Calls `f(i, chunk)` for the consecutive `chunk`-sized pieces of `out` (the last may be
/// shorter), in parallel when the total `work` is worth it.
pub fn for_each_chunk<T: Send, F: Fn(usize, &mut [T]) + Sync + Send>(out: &mut [T], chunk: usize, work: usize, f: F) {
    let chunk = chunk.max(1);
    if worth_parallel(out.len().div_ceil(chunk), work) {
        install(|| out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

fn in_rconv_pool() -> bool {
    std::thread::current().name().is_some_and(|n| n.starts_with("rconv-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_is_an_error() {
        assert!(set_num_threads(0).is_err());
    }

    #[test]
    fn helpers_visit_every_item_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for work in [0, INLINE_WORK * 4] {
            let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            for_each(hits.len(), work, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            let mut out = vec![0usize; 1003];
            for_each_chunk(&mut out, 10, work, |i, c| c.iter_mut().for_each(|v| *v += i + 1));
            assert!(out.iter().enumerate().all(|(j, &v)| v == j / 10 + 1));
        }
    }

    #[test]
    fn install_runs_on_the_pool() {
        let n = install(rayon::current_num_threads);
        assert_eq!(n, get_num_threads());
    }
}

//! The thread pool every operation runs on, and the thread count.
//!
//! rconv owns one rayon pool (not rayon's global one) so that `set_num_threads` can resize it at
//! any time. It holds one thread fewer than the thread count, each running a helper loop
//! (`Helpers`): the calling thread takes part in every parallel call (`share`), taking items
//! from the same counter as the helpers. The work split of every kernel depends only on the
//! problem's shape, never on the number of threads, so results are bitwise identical for any
//! thread count.
//!
//! Fork safety: a child process made by `fork()` inherits the pool's bookkeeping but none of its
//! threads, so waiting on it would hang forever. The pool remembers the process id it was built
//! in; a call from another process builds a fresh pool and leaks the dead one (its threads do
//! not exist in the child, so there is nothing to join, and its locks may be held by threads
//! that are gone). `STATE`, which the child does need, is held across every fork (`fork`).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Environment variable read for the default thread count.
pub const NUM_THREADS_ENV: &str = "RCONV_NUM_THREADS";

struct PoolState {
    /// The requested thread count; 0 until first use (then the default is resolved).
    threads: usize,
    /// The helpers and the id of the process that built them.
    pool: Option<(u32, Arc<Helpers>)>,
}

static STATE: Mutex<PoolState> = Mutex::new(PoolState { threads: 0, pool: None });

fn lock() -> MutexGuard<'static, PoolState> {
    static HELD_ACROSS_FORKS: AtomicBool = AtomicBool::new(false);
    if !HELD_ACROSS_FORKS.load(Ordering::Relaxed) && !HELD_ACROSS_FORKS.swap(true, Ordering::Relaxed) {
        crate::fork::hold_across_forks::<StateLock>();
    }
    lock_state()
}

fn lock_state() -> MutexGuard<'static, PoolState> {
    // A panic while holding the lock cannot leave PoolState inconsistent (each field is written
    // whole), so a poisoned lock is still usable.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `STATE`, held across forks: a thread of the parent inside a call holds it now and then, and
/// a child that inherited it taken blocked forever in its first parallel call.
struct StateLock;

impl crate::fork::ForkLock for StateLock {
    fn hold() -> Box<dyn std::any::Any> {
        Box::new(lock_state())
    }
}

/// Drops the pool, or leaks it if it was built before a fork: its threads do not exist in this
/// process, and dropping it would signal them under locks that a thread now gone may hold.
fn discard_pool(state: &mut PoolState) {
    if let Some((owner, pool)) = state.pool.take() {
        if owner != std::process::id() {
            std::mem::forget(pool);
        }
    }
}

/// The most threads rconv runs on. Threads beyond the CPUs add no speed (each kernel keeps its
/// core busy) and each costs a stack, a start and, per call, a wake-up or a wait for a core: a
/// pool of 100,000 threads was still starting after two minutes, and one of 2,000 took 11.6 s
/// to start, after which a 16x32x64x64 convolution took 510 ms against 10 ms on 2 threads
/// (2-core VM). 256 leaves room for the largest servers rconv is likely to run on, and on that
/// VM a pool of 256 starts in ~10 ms and a call takes 1-5x its time on 2 threads (notes/API.md).
pub const MAX_THREADS: usize = 256;

/// The number of CPUs this process may run on, at most `MAX_THREADS`.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

/// The thread count `RCONV_NUM_THREADS` (its value `value`, if set) asks for, and a warning
/// when the value cannot be used as it is: a number above `MAX_THREADS` gives `MAX_THREADS`;
/// anything else that is not a positive integer gives the number of CPUs. Unset or empty gives
/// the number of CPUs without a warning.
fn env_threads(value: Option<&str>) -> (usize, Option<String>) {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return (cpus(), None);
    };
    let digits = text.strip_prefix('+').unwrap_or(text);
    // All digits: a count, too large for u128 when it does not parse.
    let count = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse::<u128>().unwrap_or(u128::MAX));
    match count {
        Some(n) if (1..=MAX_THREADS as u128).contains(&n) => (n as usize, None),
        Some(n) if n > MAX_THREADS as u128 => (
            MAX_THREADS,
            Some(format!("{NUM_THREADS_ENV}={text} is more than the {MAX_THREADS} threads rconv runs on at most; using {MAX_THREADS}")),
        ),
        _ => {
            let cpus = cpus();
            (cpus, Some(format!("{NUM_THREADS_ENV}={text:?} is not a positive integer; using the number of CPUs, {cpus}")))
        }
    }
}

/// The default thread count, from `RCONV_NUM_THREADS` (see `env_threads`), and its warning.
fn default_threads() -> (usize, Option<String>) {
    let value = std::env::var_os(NUM_THREADS_ENV);
    env_threads(value.as_ref().map(|v| v.to_str().unwrap_or("(not UTF-8)")))
}

/// Sets the number of threads used by every later call (1 to `MAX_THREADS`).
pub fn set_num_threads(n: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(Error::invalid("n", format!("set_num_threads: n must be between 1 and {MAX_THREADS}, got {n}")));
    }
    let mut state = lock();
    if state.threads != n {
        state.threads = n;
        discard_pool(&mut state);
    }
    Ok(())
}

/// The number of threads calls run on.
pub fn get_num_threads() -> usize {
    let mut state = lock();
    if state.threads == 0 {
        state.threads = default_threads().0;
    }
    state.threads
}

/// Re-reads `RCONV_NUM_THREADS` (the Python module calls this at import); returns the warning
/// for a value that could not be used as it is (see `env_threads`), for the caller to show.
pub fn init_from_env() -> Option<String> {
    let (threads, warning) = default_threads();
    let mut state = lock();
    state.threads = threads;
    discard_pool(&mut state);
    warning
}

/// The helpers: one fewer than the thread count (at least one), since the calling thread takes
/// part in every parallel call. None if the OS refuses threads (calls then run inline).
fn pool() -> Option<Arc<Helpers>> {
    let mut state = lock();
    if state.threads == 0 {
        state.threads = default_threads().0;
    }
    let pid = std::process::id();
    match &state.pool {
        Some((owner, pool)) if *owner == pid => return Some(Arc::clone(pool)),
        _ => discard_pool(&mut state),
    }
    let helpers = Arc::new(Helpers::start(state.threads.saturating_sub(1).max(1))?);
    state.pool = Some((pid, Arc::clone(&helpers)));
    Some(helpers)
}

/// How long a helper keeps watching for the next call after its last one before it sleeps.
/// Waking a sleeping thread costs the caller a system call and, on the development VM, an
/// interrupt to the other virtual CPU: 15-30 us, which made a 75,000-element ReLU slower on 2
/// threads than on 1 (median 31 against 16 us with 20 us of Python between calls). A training
/// step's calls come a few microseconds to a few hundred apart.
const WATCH: Duration = Duration::from_micros(300);

/// The pool's threads, each running `helper_loop` until the pool is dropped.
struct Helpers {
    shared: Arc<Shared>,
    _threads: ThreadPool,
}

/// What the caller and the helpers share.
struct Shared {
    /// The call on offer (at most one at a time; a second caller meanwhile runs inline).
    offer: Mutex<Option<Arc<Call>>>,
    /// Bumped for every offer: helpers watch it.
    epoch: AtomicU64,
    /// Helpers asleep on `wake`, counted under `sleep`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Helpers {
    fn start(n: usize) -> Option<Helpers> {
        let threads = ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("rconv-{i}")).build().ok()?;
        let shared = Arc::new(Shared {
            offer: Mutex::new(None),
            // `helper_loop` counts on the start at 0.
            epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        for _ in 0..n {
            let shared = Arc::clone(&shared);
            threads.spawn(move || shared.helper_loop());
        }
        Some(Helpers { shared, _threads: threads })
    }

    /// Offers `call` to the helpers; false (nothing offered) while another call is on offer.
    fn offer(&self, call: &Arc<Call>) -> bool {
        let mut offer = self.shared.offer.lock().unwrap_or_else(|e| e.into_inner());
        if offer.is_some() {
            return false;
        }
        *offer = Some(Arc::clone(call));
        drop(offer);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        // A helper counts itself a sleeper (under `sleep`) before it checks the epoch for the
        // last time, so either it sees the new epoch or it is counted here.
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _sleep = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        true
    }

    /// Takes the offer back (the call is then closed by its caller).
    fn withdraw(&self) {
        *self.shared.offer.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _sleep = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

impl Shared {
    /// A helper: waits for each new offer and runs its body, until the pool is dropped.
    fn helper_loop(&self) {
        // The epoch the pool started with, not the current one: the call that built the pool is
        // offered before its threads have started, and a helper that took the epoch it found
        // at its start left that call to the caller alone (and with it, the first call after
        // every set_num_threads: a 4x128x128x128 11x11 convolution took 1.5 s on 2 threads as on
        // 1; now 0.8 s).
        let mut seen = 0;
        while self.next_offer(&mut seen) {
            let call = self.offer.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(call) = call {
                call.run_as_helper();
            }
        }
    }

    /// Waits until the epoch moves past `seen` (true, `seen` updated) or the pool stops
    /// (false): watching it for `WATCH`, then asleep.
    fn next_offer(&self, seen: &mut u64) -> bool {
        let since = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let epoch = self.epoch.load(Ordering::SeqCst);
            if epoch != *seen {
                *seen = epoch;
                return true;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || since.elapsed() < WATCH {
                std::hint::spin_loop();
                continue;
            }
            let mut sleep = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while self.epoch.load(Ordering::SeqCst) == *seen && !self.stop.load(Ordering::SeqCst) {
                sleep = self.wake.wait(sleep).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

thread_local! {
    /// Set while this thread runs a share of a parallel call: a call made from inside one runs
    /// inline (the other threads are busy with the outer call).
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as inside a parallel call until dropped (also when unwinding).
struct InCall;

impl InCall {
    fn enter() -> Self {
        IN_CALL.with(|c| c.set(true));
        InCall
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.with(|c| c.set(false));
    }
}

/// The body of one parallel call as the helpers see it: open while the caller works, closed
/// once the caller has finished its own share, after which no helper may start it.
struct Call {
    /// The body, its lifetime erased; None once closed. Read and cleared under the lock.
    body: Mutex<Option<&'static (dyn Fn() + Sync)>>,
    /// Helpers that may still join (the call's share of the pool).
    seats: AtomicUsize,
    /// Helpers inside the body.
    active: AtomicUsize,
    /// The payload of the first helper's panic (an `Error` from `error::raise`, or a bug),
    /// unwound again on the caller once the call is closed.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Call {
    /// The body, for a helper that will run it and then call `leave`; None once closed or
    /// when every seat is taken.
    fn enter(&self) -> Option<&'static (dyn Fn() + Sync)> {
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        if body.is_none() || self.seats.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.seats.fetch_sub(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Acquire);
        *body
    }

    /// Runs the body on a helper, if the call is still open and has a seat.
    fn run_as_helper(&self) {
        if let Some(body) = self.enter() {
            let _in_call = InCall::enter();
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
            }
            self.leave();
        }
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::Release);
    }

    /// Closes the call and waits until no helper is inside the body.
    fn close(&self) {
        *self.body.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut spins = 0u32;
        while self.active.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Closes the call when dropped, also when the caller's own share panics: the body borrows the
/// caller's stack, so no helper may still run it once the caller's frame is gone.
struct CloseOnDrop<'a>(&'a Call);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Takes a call's offer back when dropped (also when unwinding), so the next call can be offered.
struct Withdraw<'a>(Option<&'a Helpers>);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(helpers) = self.0 {
            helpers.withdraw();
        }
    }
}

/// Runs `body` on the calling thread and, at the same time, on up to `helpers` of the pool's
/// threads; returns when every run has returned. Each run takes items from a counter the body
/// shares, so whoever is free takes the next item.
///
/// Why the caller takes part, and why it does not wait for helpers that have not started: a
/// caller that hands everything to the pool sleeps until the pool is done and is then woken,
/// and a helper that wakes after the caller has taken every item would still be waited for. On
/// the 2-core development VM each wake costs tens of microseconds, which made a LeNet-5
/// training step slower on 2 threads than on 1. Here a helper that arrives after the caller
/// has closed the call does nothing, and the caller only waits (spinning: the items are short)
/// for helpers still inside an item. Helpers watch for the next call for a while before they
/// sleep (`WATCH`), so back-to-back calls need no wake at all.
fn share<F: Fn() + Sync>(helpers: usize, body: F) {
    let body: &(dyn Fn() + Sync) = &body;
    // SAFETY: the erased reference is only used between `Call::enter` and `Call::leave`, and
    // `CloseOnDrop` below keeps this frame (and so `body`) alive until the call is closed and
    // no helper is between the two; a helper that enters after that gets None.
    let erased: &'static (dyn Fn() + Sync) = unsafe { std::mem::transmute(body) };
    let call = Arc::new(Call {
        body: Mutex::new(Some(erased)),
        seats: AtomicUsize::new(helpers),
        active: AtomicUsize::new(0),
        panic: Mutex::new(None),
    });
    {
        // From here on, leaving this block (also by a panic) closes the call and waits for
        // any helper inside it.
        let _close = CloseOnDrop(&call);
        let pool = pool();
        // Another thread's call on offer, or no pool: this one runs on the caller alone.
        let _offer = Withdraw(pool.as_deref().filter(|p| p.offer(&call)));
        let _in_call = InCall::enter();
        body();
    }
    let payload = call.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
}

/// Work (in element operations) below which a call runs on the calling thread: waking a helper
/// costs more than the whole of such a call.
pub const INLINE_WORK: usize = 1 << 16;

/// The number of helper threads worth waking for `items` items of `work` in total (0: inline).
fn helpers_for(items: usize, work: usize) -> usize {
    if items <= 1 || work < INLINE_WORK || IN_CALL.with(|c| c.get()) {
        return 0;
    }
    (get_num_threads() - 1).min(items - 1)
}

/// Calls `f(i)` for every `i < items`, in parallel on rconv's threads when the total `work` is
/// worth it, else in order on the calling thread. Items must be independent; since each item
/// computes the same either way, results never depend on the thread count.
pub fn for_each<F: Fn(usize) + Sync + Send>(items: usize, work: usize, f: F) {
    for_each_init(items, work, || (), |_, i| f(i));
}

/// As `for_each`, with a scratch value made by `init` for each thread that takes an item (or
/// once when inline).
pub fn for_each_init<S, I, F>(items: usize, work: usize, init: I, f: F)
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize) + Sync + Send,
{
    let helpers = helpers_for(items, work);
    if helpers == 0 {
        let mut scratch = init();
        // Without a check, the plain loop: stepping through runs cost LeNet-5's second
        // convolution 3-5 us of its 262 on one thread (A/B), inlining the kernel differently.
        if INTERRUPT_CHECK.with(|c| c.get()).is_none() {
            (0..items).for_each(|i| f(&mut scratch, i));
            return;
        }
        let grain = grain(items, work, 1);
        for first in (0..items).step_by(grain) {
            (first..(first + grain).min(items)).for_each(|i| f(&mut scratch, i));
            poll_interrupt(grain * per_item(items, work));
        }
        return;
    }
    let grain = grain(items, work, helpers + 1);
    let next = AtomicUsize::new(0);
    share(helpers, || {
        // A thread that unwinds out of an item (an error raised, an interrupt, or a bug) takes
        // the remaining items away, so the others stop after their current item instead of
        // finishing the call.
        let _stop = StopOnUnwind(&next, items);
        let mut scratch = None;
        loop {
            let first = next.fetch_add(grain, Ordering::Relaxed);
            if first >= items {
                break;
            }
            let scratch = scratch.get_or_insert_with(&init);
            (first..(first + grain).min(items)).for_each(|i| f(scratch, i));
            poll_interrupt(grain * per_item(items, work));
        }
    });
}

/// Moves a shared item counter past the last item when dropped during unwinding. (The other
/// threads then stop at the end of their run of items: one item, or about `GRAIN_WORK`.)
struct StopOnUnwind<'a>(&'a AtomicUsize, usize);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(self.1, Ordering::Relaxed);
        }
    }
}

/// How often, at most, the calling thread runs its interrupt check during a call: often enough
/// that an interrupt stops a call well within 0.2 s (it then waits for the items in progress),
/// rarely enough that the check (a few microseconds to take the GIL and look for signals, in
/// the Python extension) costs nothing measurable.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// Work (in element operations) between two looks at the clock in `poll_interrupt`: a few to a
/// few hundred microseconds, against `CHECK_EVERY`'s 10 ms. Reading the clock after every run of
/// items cost LeNet-5's first convolution on one thread (depthwise, many small inner calls)
/// 2-4 us of its 200.
const CLOCK_WORK: usize = 1 << 18;

/// A thread's interrupt check (`with_interrupt_check`).
#[derive(Clone, Copy)]
struct InterruptCheck {
    interrupted: fn() -> bool,
    /// When it is next due.
    due: Instant,
    /// Work done since the clock was last read.
    unclocked: usize,
}

thread_local! {
    static INTERRUPT_CHECK: std::cell::Cell<Option<InterruptCheck>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with `interrupted` as the calling thread's interrupt check: while `f` runs parallel
/// calls (`for_each*`), this thread calls `interrupted()` between the runs of items it takes, at
/// most every `CHECK_EVERY` (never during the first). When it returns true, the call stops: the
/// other threads take no further items and finish the one they are in, this thread waits for
/// them, and `f` returns `Err(Error::Interrupted)` (so do the errors kernels raise). What the
/// call was writing is then partly written. Only this thread checks; helper threads never run
/// `interrupted`.
///
/// The Python extension installs a check that runs Python's signal handlers, so that Ctrl-C
/// stops a long call (`python/args.rs`).
pub fn with_interrupt_check<R>(interrupted: fn() -> bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
    /// Puts back the check that was installed before (also when unwinding).
    struct Restore(Option<InterruptCheck>);
    impl Drop for Restore {
        fn drop(&mut self) {
            INTERRUPT_CHECK.with(|c| c.set(self.0));
        }
    }
    let check = InterruptCheck { interrupted, due: Instant::now() + CHECK_EVERY, unclocked: 0 };
    let _restore = Restore(INTERRUPT_CHECK.with(|c| c.replace(Some(check))));
    crate::error::catch(f)
}

/// Counts `work` just done and runs this thread's interrupt check if it is due; unwinds with
/// `Error::Interrupted` if it reports an interrupt.
fn poll_interrupt(work: usize) {
    let Some(mut check) = INTERRUPT_CHECK.with(|c| c.get()) else {
        return;
    };
    check.unclocked = check.unclocked.saturating_add(work);
    let due = check.unclocked >= CLOCK_WORK && {
        check.unclocked = 0;
        let now = Instant::now();
        let due = now >= check.due;
        if due {
            check.due = now + CHECK_EVERY;
        }
        due
    };
    INTERRUPT_CHECK.with(|c| c.set(Some(check)));
    if due && (check.interrupted)() {
        crate::error::raise(Error::Interrupted);
    }
}

/// Work (in element operations) worth one trip to the shared item counter. Items are taken in
/// runs of at least this much work: taking LeNet-5's 1,024 pooling planes one by one from two
/// threads (~100 operations each) bounced the counter's cache line between the cores on every
/// item and took longer than one thread alone.
const GRAIN_WORK: usize = 1 << 13;

/// The work of one item (at least 1).
fn per_item(items: usize, work: usize) -> usize {
    (work / items.max(1)).max(1)
}

/// How many consecutive items a thread takes at a time: enough for `GRAIN_WORK`, but no more
/// than an eighth of a fair share, so that the threads still finish together.
fn grain(items: usize, work: usize, threads: usize) -> usize {
    let per_item = per_item(items, work);
    let fair = (items / (8 * threads.max(1))).max(1);
    GRAIN_WORK.div_ceil(per_item).clamp(1, fair)
}

/// A pointer that may cross threads: `for_each_chunk` hands each thread disjoint chunks of it.
struct SharedMut<T>(*mut T);
// SAFETY: only used by `for_each_chunk`, whose items are disjoint chunks of one `&mut [T]` with
// `T: Send`, each handed to exactly one thread.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the wrapper and not the bare pointer).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Calls `f(i, chunk)` for the consecutive `chunk`-sized pieces of `out` (the last may be
/// shorter), in parallel when the total `work` is worth it.
pub fn for_each_chunk<T: Send, F: Fn(usize, &mut [T]) + Sync + Send>(out: &mut [T], chunk: usize, work: usize, f: F) {
    let chunk = chunk.max(1);
    let (len, items) = (out.len(), out.len().div_ceil(chunk));
    let base = SharedMut(out.as_mut_ptr());
    for_each(items, work, |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: item i covers out[start..start + n], inside `out` and disjoint from every
        // other item's; each item is taken once, and `out` stays borrowed mutably until
        // `for_each` returns.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_outside_one_to_the_cap_are_errors() {
        assert!(set_num_threads(0).is_err());
        let err = set_num_threads(MAX_THREADS + 1).unwrap_err();
        assert_eq!(err.arg(), "n");
        assert!(err.to_string().contains("between 1 and 256"), "{err}");
    }

    #[test]
    fn the_environment_variable_is_clamped_or_ignored_with_a_warning() {
        assert_eq!(env_threads(Some(" 3 ")), (3, None));
        assert_eq!(env_threads(Some("256")), (256, None));
        assert_eq!(env_threads(None), (cpus(), None));
        assert_eq!(env_threads(Some("")), (cpus(), None));
        for too_many in ["257", "+100000", "999999999999999999999999999999999999999999"] {
            let (n, warning) = env_threads(Some(too_many));
            assert_eq!(n, MAX_THREADS);
            assert!(warning.unwrap().contains(&format!("using {MAX_THREADS}")));
        }
        for bad in ["0", "-2", "four", "2.5", "+", "1e3"] {
            let (n, warning) = env_threads(Some(bad));
            assert_eq!(n, cpus());
            assert!(warning.unwrap().contains("not a positive integer"), "{bad}");
        }
    }

    #[test]
    fn helpers_visit_every_item_once() {
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
    #[cfg_attr(miri, ignore = "rebuilds the pool: crossbeam-epoch trips Stacked Borrows when the old one's threads exit")]
    fn the_first_call_on_a_new_pool_is_shared() {
        // The call right after a pool is built is offered before its threads have started.
        let before = get_num_threads();
        for (round, threads) in [2, 3, 2, 3].into_iter().enumerate() {
            set_num_threads(threads).unwrap();
            let ran: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());
            for_each(40, 40 << 20, |_| {
                std::thread::sleep(Duration::from_millis(2));
                ran.lock().unwrap().push(std::thread::current().id());
            });
            let ids: std::collections::HashSet<_> = ran.into_inner().unwrap().into_iter().collect();
            assert!(ids.len() >= 2, "round {round}, {threads} threads: the items ran on {} thread(s)", ids.len());
        }
        set_num_threads(before).unwrap();
    }

    #[test]
    fn cheap_items_are_taken_in_runs_that_still_share_the_work() {
        // LeNet-5's second pool: 1,024 planes of ~100 operations, two threads.
        assert_eq!(grain(1024, 1024 * 100, 2), 64);
        assert_eq!(grain(1024, 1024 * 4, 2), 64);
        // Items worth a trip each are taken one by one.
        assert_eq!(grain(64, 64 * GRAIN_WORK, 2), 1);
        assert_eq!(grain(3, 0, 2), 1);
        for (items, work) in [(1, 1), (7, 1 << 20), (1000, 1 << 18), (1 << 20, 1 << 20)] {
            let g = grain(items, work, 2);
            assert!(g >= 1 && (g == 1 || g <= items / 16), "{items} items, work {work}: runs of {g}");
        }
    }

    #[test]
    fn nested_calls_run_inline_and_every_item_once() {
        let hits: Vec<AtomicUsize> = (0..64 * 64).map(|_| AtomicUsize::new(0)).collect();
        for_each(64, INLINE_WORK * 4, |i| {
            for_each(64, INLINE_WORK * 4, |j| {
                hits[i * 64 + j].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn calls_from_several_threads_each_visit_every_item_once() {
        // One call is on offer at a time; the others run on their callers meanwhile.
        std::thread::scope(|scope| {
            for t in 0..3 {
                scope.spawn(move || {
                    for round in 0..50 {
                        let hits: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
                        for_each(hits.len(), INLINE_WORK * 4, |i| {
                            hits[i].fetch_add(1 + t, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1 + t), "thread {t}, round {round}");
                    }
                });
            }
        });
    }

    #[test]
    fn an_error_raised_by_any_thread_reaches_the_caller_as_err() {
        for failing in [0, 5, 15] {
            let done = AtomicUsize::new(0);
            let result = crate::error::catch(|| {
                for_each(16, INLINE_WORK * 4, |i| {
                    if i == failing {
                        crate::error::raise(Error::alloc("scratch", format!("item {i}")));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
                Ok(())
            });
            let err = result.unwrap_err();
            assert_eq!((err.arg(), err.to_string()), ("scratch", format!("item {failing}")));
            assert!(done.load(Ordering::Relaxed) < 16);
        }
    }

    /// Interrupt checks for the tests below: each counts its calls and the threads it ran on.
    static CHECKS: AtomicUsize = AtomicUsize::new(0);
    static CHECKS_OFF_CALLER: AtomicUsize = AtomicUsize::new(0);
    static CALLER: Mutex<Option<std::thread::ThreadId>> = Mutex::new(None);
    static DONE: AtomicUsize = AtomicUsize::new(0);

    fn count_check() {
        CHECKS.fetch_add(1, Ordering::SeqCst);
        if *CALLER.lock().unwrap() != Some(std::thread::current().id()) {
            CHECKS_OFF_CALLER.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn interrupt_at_third_check() -> bool {
        count_check();
        CHECKS.load(Ordering::SeqCst) >= 3
    }

    fn never_interrupt() -> bool {
        count_check();
        false
    }

    #[test]
    fn an_interrupt_check_stops_the_call_on_the_calling_thread_only() {
        // One test, so that the checks' counters see one call at a time.
        *CALLER.lock().unwrap() = Some(std::thread::current().id());
        // Under Miri: the pool as it is (crossbeam-epoch, inside rayon, trips Stacked Borrows
        // when a replaced pool's threads exit), and no timing.
        let counts = if cfg!(miri) { vec![get_num_threads()] } else { vec![1, 2, 3] };
        for threads in counts {
            let before = get_num_threads();
            set_num_threads(threads).unwrap();
            // 200 items of 1 ms (about a million operations each): the check is due every
            // CHECK_EVERY (10 ms) of the caller's.
            DONE.store(0, Ordering::SeqCst);
            CHECKS.store(0, Ordering::SeqCst);
            let start = Instant::now();
            let result = with_interrupt_check(interrupt_at_third_check, || {
                for_each(200, 200 << 20, |_| {
                    std::thread::sleep(Duration::from_millis(1));
                    DONE.fetch_add(1, Ordering::SeqCst);
                });
                Ok(())
            });
            let (elapsed, done) = (start.elapsed(), DONE.load(Ordering::SeqCst));
            assert_eq!(result, Err(Error::Interrupted), "{threads} threads");
            assert_eq!(CHECKS.load(Ordering::SeqCst), 3);
            assert!(done < 200 && (cfg!(miri) || elapsed < Duration::from_millis(150)), "{threads} threads: {done} items in {elapsed:?}");
            // No item runs on after the call has returned, and the pool serves the next call.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(DONE.load(Ordering::SeqCst), done);
            let mut out = vec![0usize; 1000];
            let completed = with_interrupt_check(never_interrupt, || {
                for_each_chunk(&mut out, 10, 100 << 19, |i, c| {
                    std::thread::sleep(Duration::from_micros(500));
                    c.fill(i)
                });
                Ok(())
            });
            assert_eq!(completed, Ok(()));
            assert!(out.iter().enumerate().all(|(j, &v)| v == j / 10));
            set_num_threads(before).unwrap();
        }
        assert_eq!(CHECKS_OFF_CALLER.load(Ordering::SeqCst), 0);
        // Short calls never check; with no check installed, nothing is checked.
        CHECKS.store(0, Ordering::SeqCst);
        let quick = with_interrupt_check(interrupt_at_third_check, || {
            for_each(100, INLINE_WORK * 4, |_| {});
            Ok(7)
        });
        assert_eq!((quick, CHECKS.load(Ordering::SeqCst)), (Ok(7), 0));
        for_each(20, 20 << 20, |_| std::thread::sleep(Duration::from_millis(1)));
        assert_eq!(CHECKS.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_panicking_item_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            for_each(16, INLINE_WORK * 4, |i| assert!(i != 11, "item 11"));
        });
        assert!(caught.is_err());
        // The pool still serves later calls.
        let mut out = vec![0u32; 100];
        for_each_chunk(&mut out, 7, INLINE_WORK * 4, |i, c| c.fill(i as u32));
        assert!(out.iter().enumerate().all(|(j, &v)| v as usize == j / 7));
    }
}

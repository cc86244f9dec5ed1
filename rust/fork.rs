//! Locks a forked child must find free.
//!
//! `fork()` copies the whole memory of the process but only the calling thread, so a lock that
//! another thread held at that moment stays taken in the child for good, and the child's first
//! call that needs it blocks forever (6 of 300 forks made while other threads computed). The
//! locks a child's call can reach are the pool's `STATE` (every parallel call takes it, see
//! `parallel`) and, in the Python extension, the allocator's block cache (`alloc`). The pool's
//! other locks belong to its helper threads and calls, which the child does not have: its first
//! call builds a new pool and leaves the old one alone.
//!
//! Each such lock is held across every fork of the process: a `pthread_atfork` handler takes it
//! just before the fork (waiting, if need be, for the thread that holds it to finish its short
//! critical section) and drops it just after, in the parent and in the child alike. The child
//! then finds the lock free and the data it guards whole. A lock that remembers which process
//! took it would also let the child in, but to data that the other thread may have left half
//! updated.

use std::any::Any;
use std::cell::RefCell;

/// A lock to hold across forks (see the module doc).
pub(crate) trait ForkLock {
    /// Takes the lock (waiting for it) and returns its guard.
    fn hold() -> Box<dyn Any>;
}

thread_local! {
    /// The guards taken just before a fork, dropped just after it. Prepare handlers run in the
    /// reverse order of registration and the after-fork handlers in that order, so each after-fork
    /// handler drops the guard its prepare handler pushed last.
    static HELD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn prepare<L: ForkLock>() {
    let guard = L::hold();
    HELD.with(|held| held.borrow_mut().push(guard));
}

extern "C" fn release() {
    let guard = HELD.with(|held| held.borrow_mut().pop());
    drop(guard);
}

#[cfg(all(unix, not(miri)))]
extern "C" {
    fn pthread_atfork(prepare: Option<extern "C" fn()>, parent: Option<extern "C" fn()>, child: Option<extern "C" fn()>) -> std::ffi::c_int;
}

/// Holds `L`'s lock across every later fork of the process. Register each lock once.
pub(crate) fn hold_across_forks<L: ForkLock>() {
    #[cfg(all(unix, not(miri)))]
    // SAFETY: the handlers are plain functions of this library, which is never unloaded (a
    // Python extension module stays loaded; a Rust program links the crate in); they only take
    // and drop a lock on the forking thread.
    unsafe {
        pthread_atfork(Some(prepare::<L>), Some(release), Some(release));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static DATA: Mutex<u32> = Mutex::new(0);

    struct Data;
    impl ForkLock for Data {
        fn hold() -> Box<dyn Any> {
            Box::new(DATA.lock().unwrap())
        }
    }

    #[test]
    fn handlers_hold_the_lock_from_prepare_to_release() {
        prepare::<Data>();
        assert!(DATA.try_lock().is_err());
        release();
        assert!(DATA.try_lock().is_ok());
    }
}

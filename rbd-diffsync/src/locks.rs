//! Locking that outlives a panic: a thread that panicked while holding a lock (a progress
//! callback, a test) leaves data that is still consistent at every step of this crate, so the
//! next holder takes it as it is instead of panicking in turn.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, giving `guard` back while it waits, poisoned or not.
pub(crate) fn wait<'m, T>(cv: &Condvar, guard: MutexGuard<'m, T>) -> MutexGuard<'m, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

//! Locks that outlive a panicked holder. Every mutex in the gateway guards data that stays
//! consistent between statements (a map, a counter), so a panic elsewhere must not take the
//! whole gateway down with it: the guard is taken back from the poison.
use std::sync::{Mutex, MutexGuard};

/// [`Mutex::lock`], recovering the guard from a panicked holder.
pub trait LockExt<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

//! The process's allocator, as the long-lived threads see it. The daemon allocates with
//! mimalloc (`main.rs`): memory a thread frees stays in that thread's heap until mimalloc
//! next looks at it, and it looks from the thread's own allocations. A data-path thread
//! whose connections went quiet and gave their buffers back would keep them resident until
//! it next got busy.

/// Lets mimalloc return to the system what the calling thread freed and no longer uses: it
/// frees the thread's pages that hold no block any more, and purges what has been free for
/// longer than its purge delay. Cheap when there is nothing to return: it runs about once a
/// second on each data-path thread. On a thread mimalloc never served (the library's own
/// tests, where it is not the global allocator) it returns at once.
pub fn return_freed() {
    // SAFETY: mi_collect has no preconditions; without `force` it only collects the calling
    // thread's heap and purges what has been free for the purge delay.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

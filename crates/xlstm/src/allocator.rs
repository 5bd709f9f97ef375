//! glibc's allocator, set up for tensor work.
//!
//! burn-ndarray allocates a fresh buffer for almost every tensor op. With glibc's defaults,
//! buffers above the (adaptive) mmap threshold are mapped and unmapped on every call, and the
//! heap top is trimmed back to the kernel whenever a large block is freed, so the same pages
//! fault in again on the next op. For recurrent generation at batch 1 that was a third of the
//! time per token (`perf`: `exc_page_fault`, `brk`). Keeping freed memory in the process
//! (the largest mmap threshold glibc accepts, no trimming, a padded heap top) removes that.
//! Memory held is then the peak working set, which a training or generation run reaches
//! anyway.

/// Applies the settings above (glibc only; other C libraries keep their defaults).
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called once at start-up, before any
    // other thread exists.
    unsafe {
        // glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

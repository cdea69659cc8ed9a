//! How the C allocator hands memory back: luod's servers keep what they freed.
//!
//! A server that starts from an image (an upgrade's successor, a recovery) allocates and frees
//! buffers of megabytes in a row: the image it reads, the state it rebuilds, the checkpoint it
//! writes. By default glibc serves each such buffer from a fresh `mmap` and unmaps it when it is
//! freed, so every one costs a page fault per 4 KiB touched; on a virtualized host a fault costs
//! microseconds, and a recovery of thousands of descriptors spent a fifth of its time in them.
//! Served from the heap instead, and kept there when freed, a later buffer reuses pages that are
//! already mapped.

/// Buffers up to this size come from the heap rather than their own mapping.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of the heap is handed back to the kernel only above this.
pub const TRIM_THRESHOLD: usize = 64 << 20;

/// Sets glibc's thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]). Call it first thing in
/// `main`, before threads exist. Returns false where the allocator is not glibc's or refused.
pub fn keep_freed_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        let as_int = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's tuning parameters; it is called before
        // any other thread exists, as glibc asks, and both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(MMAP_THRESHOLD)) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(TRIM_THRESHOLD)) == 1
        }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_thresholds() {
        assert_eq!(keep_freed_memory(), cfg!(target_env = "gnu"));
    }
}

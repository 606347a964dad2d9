//! glibc's allocator, set for streaming. A tunnelled download passes through buffers of 64 KiB
//! to 650 KiB (hyper's read buffers, quinn's send batches) that are freed as fast as they are
//! made. By default glibc serves allocations over 128 KiB with fresh `mmap`s and hands memory
//! over 128 KiB at the top of a heap back to the kernel when it is freed, so each buffer is
//! mapped, zeroed by the kernel page by page and unmapped again: on a 256 MB download through
//! stub and agent, page faults, page clearing and unmapping were about a tenth of the agent's
//! CPU (perf). Keeping up to [`TRIM_THRESHOLD`] of freed memory per heap and serving up to
//! [`MMAP_THRESHOLD`] from the heaps removes that work; measured side by side it cut CPU per
//! byte by a sixth and raised throughput by a tenth (`scripts/bench.sh --only bytes`).
//!
//! The price is memory kept after a burst: up to [`TRIM_THRESHOLD`] per heap, and glibc keeps a
//! heap for each thread that met another in the allocator (at most eight per core). On the
//! two-core machines here that is a few tens of MiB at most; the stub's memory per agent
//! connection did not change (41 KiB in `scripts/bench.sh`).

/// Allocations up to this size come from the heaps, not from `mmap` of their own.
pub const MMAP_THRESHOLD: usize = 1 << 20;
/// Freed memory at the top of a heap is kept up to this size before it goes back to the kernel.
pub const TRIM_THRESHOLD: usize = 16 << 20;

/// Sets the thresholds (glibc only; elsewhere the allocator stays as it is). Returns whether
/// they were set. Call before threads start.
pub fn tune_for_streaming() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt changes allocator parameters; it is called before any other thread
        // exists, and these two are documented to be settable at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// glibc takes both thresholds (this machine runs glibc, as CI does).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_thresholds() {
        assert!(super::tune_for_streaming());
    }
}

//! The open-file limit. Every watch through the agent holds a TCP connection to the API server,
//! and every front-door client one to the stub, so a default soft limit of 1024 would cap a
//! busy agent or stub far below what it can carry. Like many servers (and Go's runtime), both
//! raise their soft limit to the hard limit at start; the hard limit stays the operator's.

const NR_OPEN_DEFAULT: libc::rlim_t = 1 << 20;

/// The soft and hard limits of open files, after raising the soft one to the hard one (as far
/// as the kernel allows). `None` if the limit cannot be read.
pub fn raise_to_hard_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    // An unlimited hard limit still meets the kernel's `fs.nr_open` (1048576 by default).
    let target = if limit.rlim_max == libc::RLIM_INFINITY { NR_OPEN_DEFAULT } else { limit.rlim_max };
    if limit.rlim_cur < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (soft, hard) = super::raise_to_hard_limit().expect("RLIMIT_NOFILE is readable");
        assert!(soft == hard || (hard == libc::RLIM_INFINITY && soft >= super::NR_OPEN_DEFAULT));
    }
}

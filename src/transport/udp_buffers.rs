//! Kernel buffers for the QUIC UDP socket: ask for large ones, and say once, at warning level,
//! when the kernel grants less, with the numbers and the sysctl that raises its cap.
//!
//! A fast sender's bursts land in the receive buffer before quinn reads them; one that is too
//! small drops packets, which the sender then retransmits: slower transfers and more CPU, with
//! nothing in the logs to say why. Containers and default kernels often cap buffers at 208 KiB
//! (`net.core.rmem_max`), below what we ask for.

use std::sync::atomic::{AtomicBool, Ordering};

use socket2::Socket;

/// Bytes we ask for, each way.
pub const REQUESTED_BYTES: usize = 8 * 1024 * 1024;

/// What the kernel granted. Linux doubles a granted request for its bookkeeping and reports the
/// doubled value, so a full grant reads as twice the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub recv: usize,
    pub send: usize,
}

/// Sizes the socket's buffers: first as any process may (capped by `net.core.rmem_max` and
/// `wmem_max`), then, for what fell short, past the cap where the process has `CAP_NET_ADMIN`
/// (`SO_RCVBUFFORCE`, as root on a host). Warns once per process if still short.
pub fn size(socket: &Socket) -> Granted {
    socket.set_recv_buffer_size(REQUESTED_BYTES).ok();
    socket.set_send_buffer_size(REQUESTED_BYTES).ok();
    let mut granted = read(socket);
    if shortfall(REQUESTED_BYTES, granted).is_some() {
        force(socket, libc::SO_RCVBUFFORCE, granted.recv);
        force(socket, libc::SO_SNDBUFFORCE, granted.send);
        granted = read(socket);
    }
    tracing::debug!(requested = REQUESTED_BYTES, recv = granted.recv, send = granted.send, "UDP socket buffers");
    if let Some(message) = shortfall(REQUESTED_BYTES, granted) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(requested = REQUESTED_BYTES, recv = granted.recv / 2, send = granted.send / 2, "{message}");
        }
    }
    granted
}

fn read(socket: &Socket) -> Granted {
    Granted { recv: socket.recv_buffer_size().unwrap_or(0), send: socket.send_buffer_size().unwrap_or(0) }
}

/// Asks past the sysctl cap; without `CAP_NET_ADMIN` the kernel refuses and nothing changes.
fn force(socket: &Socket, option: libc::c_int, granted: usize) {
    use std::os::fd::AsRawFd;
    if granted >= 2 * REQUESTED_BYTES {
        return;
    }
    let bytes = REQUESTED_BYTES as libc::c_int;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What to tell the operator when a direction got less than `requested` (given as reported,
/// i.e. doubled), or `None` when both got all of it.
pub fn shortfall(requested: usize, granted: Granted) -> Option<String> {
    let short = |reported: usize| reported / 2 < requested;
    let mut parts = Vec::new();
    if short(granted.recv) {
        parts.push(format!("receive {} of {requested}", granted.recv / 2));
    }
    if short(granted.send) {
        parts.push(format!("send {} of {requested}", granted.send / 2));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "the kernel granted smaller UDP socket buffers than asked for ({} bytes): bursts may be dropped \
         and fast transfers slowed; raise the cap with `sysctl -w net.core.rmem_max={requested} \
         net.core.wmem_max={requested}` (on Kubernetes, a node setting)",
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_grant_is_twice_the_request_and_needs_no_warning() {
        let full = Granted { recv: 2 * REQUESTED_BYTES, send: 2 * REQUESTED_BYTES };
        assert_eq!(shortfall(REQUESTED_BYTES, full), None);
    }

    #[test]
    fn a_capped_grant_names_the_direction_the_numbers_and_the_sysctl() {
        // What a default kernel gives: 212,992 bytes, reported doubled.
        let capped = Granted { recv: 2 * 212_992, send: 2 * REQUESTED_BYTES };
        let message = shortfall(REQUESTED_BYTES, capped).expect("a capped receive buffer is a shortfall");
        assert!(message.contains("receive 212992 of 8388608"), "{message}");
        assert!(!message.contains("send "), "the send buffer was granted: {message}");
        assert!(message.contains("net.core.rmem_max=8388608"), "{message}");
    }

    #[test]
    fn a_real_socket_reports_what_it_was_granted() {
        use socket2::{Domain, Protocol, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let granted = size(&socket);
        assert_eq!(granted, read(&socket));
        assert!(granted.recv > 0 && granted.send > 0, "{granted:?}");
    }
}

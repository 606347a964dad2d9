//! A TUN device: the kernel hands us every IP packet routed to it, and takes the packets we
//! write as if they had arrived on a wire. The device lives as long as its file descriptor, so a
//! link that ends (even by `kill -9`) leaves no device behind.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// An open TUN device (IP packets, no extra header).
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    pub name: String,
}

impl Tun {
    /// Creates the device `name` in the network namespace of the calling thread.
    pub fn create(name: &str) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        // SAFETY: a plain open(2) of a path we own the string of.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _rest: [0; 22] };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd always returns the one descriptor it owns, open until it drops,
        // and the AsyncFd owns it from here on.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Tun { fd, name: name.to_owned() })
    }

    /// Reads one packet into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                // SAFETY: read(2) into a buffer we own, at most its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            if let Ok(result) = read {
                return result;
            }
        }
    }

    /// Writes one packet. A full device queue drops the packet, as a wire would.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        // SAFETY: write(2) from a buffer we own, at most its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

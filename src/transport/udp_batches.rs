//! The UDP socket under quinn, with one correction: a batch of packets handed to the kernel in
//! one `sendmsg` (segmentation offload, GSO) never exceeds what the kernel takes at once.
//!
//! quinn builds a batch of up to ten packets of the path's MTU. With Ethernet-sized packets
//! that is 14.5 KB; but where MTU discovery finds a larger path (loopback, jumbo frames), ten
//! packets exceed the 64 KiB a single send may carry, the kernel refuses the batch with EINVAL,
//! and quinn-udp then turns offload off for the socket's whole life and loses the batch. Those
//! losses of large packets look like an MTU black hole, so quinn also falls back to 1,200-byte
//! packets: the slowest way to send there is. Measured on loopback, a 256 MB download fell from
//! 65 KB packets to 1,200 within the first second.
//!
//! So a batch larger than [`MAX_BATCH_BYTES`] is sent as several batches of whole packets.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most bytes of UDP payload one send may carry: an IPv4 datagram's 65,535 bytes less its
/// IP and UDP headers (20 + 8), rounded down for headroom.
pub const MAX_BATCH_BYTES: usize = 65_000;

/// A socket whose batches are cut to [`MAX_BATCH_BYTES`].
pub struct BoundedBatches(Arc<dyn AsyncUdpSocket>);

impl BoundedBatches {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> BoundedBatches {
        BoundedBatches(inner)
    }
}

impl fmt::Debug for BoundedBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoundedBatches").field(&self.0).finish()
    }
}

/// The batches `contents` is sent as: each of whole segments of `segment_size` bytes (the last
/// segment may be shorter, as in any batch) and at most [`MAX_BATCH_BYTES`] long, or one piece
/// if a single segment is longer (the kernel then refuses it as too large, as it would have).
pub fn batches(contents: &[u8], segment_size: usize) -> impl Iterator<Item = &[u8]> {
    let per_batch = (MAX_BATCH_BYTES / segment_size.max(1)).max(1) * segment_size.max(1);
    contents.chunks(per_batch)
}

impl AsyncUdpSocket for BoundedBatches {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    /// Sends the transmit, cut into batches the kernel takes. If the socket's buffer fills
    /// after some were sent, the whole transmit is reported as not sent and quinn sends it
    /// again: the receiver drops the repeated packets as duplicates, which costs less than
    /// losing them (a loss of large packets counts towards a black-hole verdict).
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment_size) = transmit.segment_size.filter(|_| transmit.contents.len() > MAX_BATCH_BYTES) else {
            return self.0.try_send(transmit);
        };
        for batch in batches(transmit.contents, segment_size) {
            self.0.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: batch,
                segment_size: (batch.len() > segment_size).then_some(segment_size),
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Batches put back together are the transmit; each is at most MAX_BATCH_BYTES (unless
        /// one segment alone is larger) and ends on a segment boundary, except the last.
        #[test]
        fn batches_cover_the_transmit_in_whole_segments(segment_size in 1usize..70_000, segments in 1usize..12, tail in 0usize..70_000) {
            let len = segment_size * (segments - 1) + 1 + tail % segment_size;
            let contents: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let cut: Vec<&[u8]> = batches(&contents, segment_size).collect();
            prop_assert_eq!(cut.concat(), contents.clone());
            for (i, batch) in cut.iter().enumerate() {
                prop_assert!(batch.len() <= MAX_BATCH_BYTES.max(segment_size));
                if i + 1 < cut.len() {
                    prop_assert_eq!(batch.len() % segment_size, 0);
                }
            }
        }
    }

    #[test]
    fn ten_jumbo_packets_go_as_batches_of_seven() {
        let contents = vec![0u8; 9_000 * 10];
        let sizes: Vec<usize> = batches(&contents, 9_000).map(<[u8]>::len).collect();
        assert_eq!(sizes, [63_000, 27_000]);
        let ethernet = vec![0u8; 1_452 * 10];
        assert_eq!(batches(&ethernet, 1_452).count(), 1);
    }
}

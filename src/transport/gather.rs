//! A QUIC receive stream that hands on what arrived in chunks of a useful size.
//!
//! quinn holds a stream's data as one piece per STREAM frame: a packet's worth, 1.2 KiB on an
//! Ethernet path. Handed on one by one, each piece became an HTTP/2 DATA frame, a TLS record and
//! a `writev` of its own at the stub's front door: on a 256 MB download that cost the stub more
//! CPU than all of QUIC's cryptography (62,000 `writev`s of 4 KB). So the pieces that are ready
//! at once are taken together and joined into chunks of up to [`CHUNK_TARGET`] (one copy, cheap
//! next to a system call per piece). A piece that is large already (a 64 KB packet where the
//! path carries it) is handed on as it is, without a copy.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// Pieces taken from quinn at once: about 64 KiB of Ethernet-sized packets.
const PIECES_AT_ONCE: usize = 48;

/// Small pieces are joined up to this size (a chunk of one piece may be larger).
pub const CHUNK_TARGET: usize = 64 * 1024;

/// A piece this large is handed on alone: joining it would copy much to save little.
pub const LARGE_PIECE: usize = 16 * 1024;

/// A QUIC receive stream and the pieces taken from it and not yet handed on.
pub struct QuicRecv {
    stream: quinn::RecvStream,
    ready: VecDeque<Bytes>,
}

impl QuicRecv {
    pub fn new(stream: quinn::RecvStream) -> QuicRecv {
        QuicRecv { stream, ready: VecDeque::new() }
    }

    /// The next chunk, waiting only while nothing is ready; `None` at the end of the stream.
    /// Cancel-safe: pieces are taken from quinn only when the call completes.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.ready.is_empty() {
            let mut pieces: [Bytes; PIECES_AT_ONCE] = std::array::from_fn(|_| Bytes::new());
            match self.stream.read_chunks(&mut pieces).await.map_err(io::Error::from)? {
                Some(n) => self.ready.extend(pieces.into_iter().take(n)),
                None => return Ok(None),
            }
        }
        Ok(Some(take_chunk(&mut self.ready)))
    }

    /// Takes nothing more from the peer; what was taken and not handed on is dropped.
    pub fn stop(&mut self, code: quinn::VarInt) {
        self.ready.clear();
        let _ = self.stream.stop(code);
    }
}

/// The next chunk from `ready` (which must hold a piece): a [`LARGE_PIECE`] alone, without a
/// copy; else the small pieces in front that fit in [`CHUNK_TARGET`] together, joined.
fn take_chunk(ready: &mut VecDeque<Bytes>) -> Bytes {
    let mut len = 0;
    let mut count = 0;
    for piece in ready.iter() {
        let large = piece.len() >= LARGE_PIECE;
        if count > 0 && (large || len + piece.len() > CHUNK_TARGET) {
            break;
        }
        len += piece.len();
        count += 1;
        if large {
            break;
        }
    }
    if count == 1 {
        return ready.pop_front().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(len);
    for piece in ready.drain(..count) {
        joined.extend_from_slice(&piece);
    }
    joined.freeze()
}

impl AsyncRead for QuicRecv {
    /// Pieces already taken come first, then the stream itself.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(front) = this.ready.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                this.ready.pop_front();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Chunks taken one after another give back every byte in order. A chunk of several
        /// pieces joins only small ones, fits in CHUNK_TARGET, and stops only where the next
        /// piece is large or would not fit.
        #[test]
        fn chunks_keep_every_byte_in_order(sizes in proptest::collection::vec(1usize..70_000, 1..40)) {
            let mut next = 0u8;
            let pieces: Vec<Bytes> = sizes
                .iter()
                .map(|&n| Bytes::from((0..n).map(|_| { next = next.wrapping_add(1); next }).collect::<Vec<u8>>()))
                .collect();
            let mut ready: VecDeque<Bytes> = pieces.iter().cloned().collect();
            let mut out = Vec::new();
            let mut at = 0;
            while !ready.is_empty() {
                let chunk = take_chunk(&mut ready);
                let taken = &sizes[at..sizes.len() - ready.len()];
                prop_assert!(!taken.is_empty());
                prop_assert_eq!(chunk.len(), taken.iter().sum::<usize>());
                if taken.len() > 1 {
                    prop_assert!(taken.iter().all(|&n| n < LARGE_PIECE), "a large piece was joined: {:?}", taken);
                    prop_assert!(chunk.len() <= CHUNK_TARGET);
                }
                if let (Some(&first), Some(&following)) = (taken.first(), sizes.get(at + taken.len())) {
                    let could_join = first < LARGE_PIECE && following < LARGE_PIECE && chunk.len() + following <= CHUNK_TARGET;
                    prop_assert!(!could_join, "stopped early: {:?} then {}", taken, following);
                }
                at += taken.len();
                out.extend_from_slice(&chunk);
            }
            prop_assert_eq!(out, pieces.concat());
        }
    }

    /// Over a real QUIC stream, chunks and plain reads taken in turn give every byte in order.
    #[tokio::test]
    async fn chunks_and_reads_in_turn_keep_the_order() {
        use tokio::io::AsyncReadExt;
        let (dialer, listener) = crate::transport::quic::testing::loopback_pair().await;
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut send, _recv) = dialer.open_bi().await.unwrap();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                for piece in sent.chunks(1_000) {
                    send.write_all(piece).await.unwrap();
                }
                send.finish().unwrap();
                send
            }
        });
        let (_send, recv) = listener.accept_bi().await.unwrap();
        let mut recv = QuicRecv::new(recv);
        let mut got = Vec::new();
        for turn in 0.. {
            if turn % 2 == 0 {
                match recv.read_chunk().await.unwrap() {
                    Some(chunk) => got.extend_from_slice(&chunk),
                    None => break,
                }
            } else {
                let mut buf = [0u8; 700];
                let n = recv.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, sent);
        drop(writer.await.unwrap());
    }

    #[test]
    fn a_lone_large_piece_is_handed_on_without_a_copy() {
        let large = Bytes::from(vec![7u8; 65_000]);
        let mut ready = VecDeque::from([large.clone(), Bytes::from_static(b"tail")]);
        let chunk = take_chunk(&mut ready);
        assert_eq!(chunk.as_ptr(), large.as_ptr(), "the same memory, not a copy");
        assert_eq!(take_chunk(&mut ready), Bytes::from_static(b"tail"));
    }

    #[test]
    fn small_pieces_are_joined() {
        let mut ready: VecDeque<Bytes> = (0..60).map(|_| Bytes::from(vec![1u8; 1_452])).collect();
        let first = take_chunk(&mut ready);
        assert_eq!(first.len(), (CHUNK_TARGET / 1_452) * 1_452);
        assert_eq!(take_chunk(&mut ready).len(), (60 - CHUNK_TARGET / 1_452) * 1_452);
        assert!(ready.is_empty());
    }
}

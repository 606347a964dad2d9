//! One frame on a stream: read exactly the prefix and the payload (never a byte of the body
//! behind it), or write one. Generic over tokio's `AsyncRead`/`AsyncWrite` so that the same code
//! serves QUIC streams and the TCP fallback's HTTP/2 streams.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError, PREFIX_LEN};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream ended cleanly before a frame started.
    #[error("stream ended before a frame")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The frame itself is bad (oversize, malformed).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The first frame did not arrive in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The stream failed (reset by the peer, connection lost).
    #[error("stream failed")]
    Io(#[source] std::io::Error),
}

/// Reads one frame of type `T`.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, WireError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; PREFIX_LEN];
    let first = reader.read(&mut prefix).await.map_err(WireError::Io)?;
    if first == 0 {
        return Err(WireError::Closed);
    }
    read_exact(reader, &mut prefix[first..]).await?;
    let len = frame::payload_len(prefix)?;
    let mut payload = vec![0u8; len];
    read_exact(reader, &mut payload).await?;
    Ok(frame::decode_payload(&payload)?)
}

/// Reads one frame, giving up after `limit`: used where the peer must speak first and at once.
pub async fn read_frame_within<T, R>(reader: &mut R, limit: Duration) -> Result<T, WireError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(limit, read_frame(reader)).await.map_err(|_| WireError::Timeout(limit))?
}

async fn read_exact<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
        Err(e) => Err(WireError::Io(e)),
    }
}

/// Reads frames of type `T` on a task of their own, one after the other, until the stream ends
/// or fails (the last item is that error). The receiver can be waited on beside other things
/// (a `select!`) without losing half a frame, as a `read_frame` future dropped mid-way would.
pub fn read_frames<T, R>(mut reader: R) -> tokio::sync::mpsc::Receiver<Result<T, WireError>>
where
    T: DeserializeOwned + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut reader).await;
            let end = frame.is_err();
            if tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Writes one frame. Does not flush or finish the stream: the body (if any) follows.
pub async fn write_frame<T, W>(writer: &mut W, msg: &T) -> Result<(), WireError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = frame::encode(msg)?;
    writer.write_all(&bytes).await.map_err(WireError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{Control, ResponseHead};

    #[tokio::test]
    async fn frames_are_read_one_at_a_time_leaving_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let head = ResponseHead { status: 200, headers: vec![] };
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &head).await.unwrap();
            a.write_all(b"raw body").await.unwrap();
        });
        let back: ResponseHead = read_frame(&mut b).await.unwrap();
        assert_eq!(back.status, 200);
        writer.await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"raw body");
    }

    #[tokio::test]
    async fn an_empty_stream_is_closed_and_a_cut_frame_is_truncated() {
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame::<Control, _>(&mut empty).await, Err(WireError::Closed)));
        let whole = frame::encode(&Control::Drain).unwrap();
        let mut cut: &[u8] = &whole[..whole.len() - 1];
        assert!(matches!(read_frame::<Control, _>(&mut cut).await, Err(WireError::Truncated)));
    }

    #[tokio::test]
    async fn frames_read_on_their_own_task_arrive_in_order_then_the_end() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut frames = read_frames::<Control, _>(b);
        let members = Control::Members { replicas: vec!["a".into(), "b".into()] };
        for frame in [Control::Drain, members.clone(), Control::DrainAck] {
            write_frame(&mut a, &frame).await.unwrap();
        }
        drop(a);
        assert_eq!(frames.recv().await.unwrap().unwrap(), Control::Drain);
        assert_eq!(frames.recv().await.unwrap().unwrap(), members);
        assert_eq!(frames.recv().await.unwrap().unwrap(), Control::DrainAck);
        assert!(matches!(frames.recv().await, Some(Err(WireError::Closed))));
        assert!(frames.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_keep_open, mut b) = tokio::io::duplex(64);
        let got = read_frame_within::<Control, _>(&mut b, Duration::from_secs(5)).await;
        assert!(matches!(got, Err(WireError::Timeout(_))));
    }
}

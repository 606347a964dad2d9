//! Flow-control windows, the same over both transports: how much a receiver lets a sender get
//! ahead of what it has read.

/// Bytes one stream may have received and not yet read: 100 MB/s at 20 ms RTT, and all that a
/// slow reader holds back per stream.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Bytes a whole connection may have received and not yet read, before any extra grant
/// (`Connection::set_receive_window`): what all streams that are being read share.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

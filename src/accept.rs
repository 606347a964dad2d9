//! The one accept loop of every TCP listener tether runs (the front door, the agents' TCP
//! fallback, the admin listener, the bench target): it stops when its shutdown token is
//! cancelled, and when `accept` fails (out of file descriptors, most often) it pauses instead of
//! spinning. The failed connection stays in the kernel's queue, so without the pause `accept`
//! fails again at once and the loop burns a whole core while serving nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed `accept` before the next one.
pub const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);
/// At most one warning per this long while `accept` keeps failing.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Accepts connections on `listener` until `shutdown` is cancelled, handing each (with
/// `TCP_NODELAY` set: every listener here serves request/response traffic) to `serve`, which
/// should spawn its own task. `what` names the listener in log lines. The listener is closed
/// when this returns.
pub async fn accept_loop<F>(listener: TcpListener, shutdown: CancellationToken, what: &'static str, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr),
{
    let mut warned: Option<Instant> = None;
    let mut failed_since_warning = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                serve(tcp, remote);
            }
            Err(e) => {
                failed_since_warning += 1;
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(listener = what, error = %e, failures = failed_since_warning, "accept failed; pausing before the next");
                    warned = Some(Instant::now());
                    failed_since_warning = 0;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PAUSE_AFTER_ERROR) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_until_shut_down_and_then_closes_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let running = tokio::spawn(accept_loop(listener, shutdown.clone(), "test", move |tcp, _| {
            tx.send(tcp.nodelay().unwrap()).unwrap();
        }));
        let _client = TcpStream::connect(addr).await.unwrap();
        assert_eq!(rx.recv().await, Some(true), "accepted, with TCP_NODELAY");
        shutdown.cancel();
        running.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the port is closed once the loop ends");
    }
}

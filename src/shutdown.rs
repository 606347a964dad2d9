//! Process signals: `SIGINT` (Ctrl-C) and `SIGTERM` both mean "shut down gracefully".

use std::future::Future;

/// Completes on the first `SIGINT` or `SIGTERM` received after this call. The handlers are
/// installed here, not when the future is first polled: a command that sets something up
/// before it waits (`tether link` creates a namespace) must not be killed by a signal that
/// arrives meanwhile, which would skip its clean-up.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM or SIGINT; only Ctrl-C will stop this process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("received SIGINT"),
            _ = term.recv() => tracing::info!("received SIGTERM"),
        }
    }
}

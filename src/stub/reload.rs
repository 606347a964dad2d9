//! Whitelist reloads while the stub runs: when the file changes (checked every
//! [`POLL_INTERVAL`]) and on `SIGHUP`. A new list takes effect for the next handshake, and every
//! live connection whose fingerprint it no longer lists (or lists for another cluster) is closed
//! with [`AppCode::Revoked`], so a removed agent is cut off within a second. A file that does not
//! parse changes nothing: the error (file and line) is logged and the list in force stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::state::StubState;
use crate::identity::whitelist::Whitelist;
use crate::wire::codes::AppCode;

/// How often the whitelist file is checked for changes (a `stat`, and a read only if it changed).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What identifies a version of the file without reading it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len() })
}

/// Watches `path` until `cancel`; `poll` false leaves only `SIGHUP`.
pub async fn watch(state: Arc<StubState>, path: PathBuf, poll: bool, cancel: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the whitelist reloads only when the file changes");
            None
        }
    };
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            _ = cancel.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = ticker.tick(), if poll => {
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                "file changed"
            }
        };
        reload(&state, &path, reason);
    }
}

/// Reads the whitelist and, if it parses, puts it in force and cuts off revoked connections.
pub fn reload(state: &StubState, path: &Path, reason: &str) {
    let list = match Whitelist::load(path) {
        Ok(list) => list,
        Err(e) => {
            return tracing::error!(reason, "whitelist not reloaded, the previous one stays in force: {e}");
        }
    };
    tracing::info!(reason, agents = list.entries().len(), "whitelist reloaded");
    for agent in state.registry.all() {
        let still = list.lookup(&agent.fingerprint).is_some_and(|entry| entry.cluster == agent.cluster);
        if !still {
            tracing::warn!(
                cluster = %agent.cluster, name = %agent.name, fingerprint = %agent.fingerprint, connection = agent.id,
                "closing connection: certificate removed from the whitelist"
            );
            agent.connection.close(AppCode::Revoked, "certificate removed from the whitelist");
        }
    }
    state.whitelist.replace(list);
}

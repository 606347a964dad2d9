//! Whitelist reloads while the stub runs: when the file changes (checked every
//! [`POLL_INTERVAL`]) and on `SIGHUP`. A new list takes effect for the next handshake, and every
//! live connection whose fingerprint it no longer lists (or lists for another cluster) is closed
//! with [`AppCode::Revoked`], so a removed agent is cut off within a second.
//!
//! A bad day must not revoke everyone: a file that does not parse, is not a regular file or is
//! too large changes nothing (the error, naming the file and line, is logged and the list in
//! force stays); a changed file is read only once it has stopped changing for a poll interval,
//! so a rewrite in place is not read half way; and a change that would leave no agent at all
//! (an emptied or truncated file) is refused: only `SIGHUP` may do that, on purpose. Files are
//! read on a blocking thread, never on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::hop::HopTo;
use super::state::StubState;
use crate::identity::whitelist::Whitelist;
use crate::wire::codes::AppCode;

/// How often the whitelist file is checked for changes (a `stat`, and a read only if it changed).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What identifies a version of the file without reading it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The file's version now (`None` while it cannot be looked at). Taken before the first load,
/// so that a change made while the stub starts is not missed.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len() })
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file changed (and then stayed the same for a poll interval).
    FileChanged,
    /// An operator sent `SIGHUP`: whatever the file says, even no agent at all.
    Hangup,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file changed",
            Trigger::Hangup => "SIGHUP",
        }
    }
}

/// Watches `path` until `cancel`, from the version `loaded` that the list in force came from;
/// `poll` false leaves only `SIGHUP`.
pub async fn watch(state: Arc<StubState>, path: PathBuf, loaded: Option<Stamp>, poll: bool, cancel: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the whitelist reloads only when the file changes");
            None
        }
    };
    let mut last = loaded;
    // A version seen once, read if it is still the same at the next poll.
    let mut settling: Option<Option<Stamp>> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = cancel.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Hangup,
            _ = ticker.tick(), if poll => {
                let now = stamp(&path);
                if now == last {
                    settling = None;
                    continue;
                }
                if settling != Some(now) {
                    settling = Some(now);
                    continue;
                }
                settling = None;
                last = now;
                Trigger::FileChanged
            }
        };
        if trigger == Trigger::Hangup {
            (last, settling) = (stamp(&path), None);
        }
        reload(&state, &path, trigger).await;
    }
}

/// Reads the whitelist and, if it is whole and may be taken, puts it in force and cuts off the
/// connections it no longer lists.
pub async fn reload(state: &StubState, path: &Path, trigger: Trigger) {
    let reason = trigger.label();
    let reading = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Whitelist::load(&reading)).await;
    let list = match loaded {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            state.metrics.whitelist_reloads.inc(&["refused"]);
            return tracing::error!(reason, "whitelist not reloaded, the previous one stays in force: {e}");
        }
        Err(e) => return tracing::error!(reason, error = %e, "whitelist not reloaded: the reading thread failed"),
    };
    let in_force = state.whitelist.get().entries().len();
    if list.entries().is_empty() && in_force > 0 && trigger == Trigger::FileChanged {
        state.metrics.whitelist_reloads.inc(&["refused"]);
        return tracing::error!(
            reason,
            in_force,
            path = %path.display(),
            "whitelist not reloaded: the file now lists no agent, which would cut off every one; \
             if that is what you want, send SIGHUP (and write the file by renaming a complete one into place)"
        );
    }
    state.metrics.whitelist_reloads.inc(&["applied"]);
    tracing::info!(reason, agents = list.entries().len(), "whitelist reloaded");
    for agent in state.registry.all() {
        let HopTo::Agent { cluster, name, fingerprint } = &agent.to else { continue };
        let still = list.lookup(fingerprint).is_some_and(|entry| entry.cluster == *cluster);
        if !still {
            tracing::warn!(
                %cluster, %name, %fingerprint, connection = agent.id,
                "closing connection: certificate removed from the whitelist"
            );
            agent.connection.close(AppCode::Revoked, "certificate removed from the whitelist");
        }
    }
    state.whitelist.replace(list);
}

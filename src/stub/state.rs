//! What every part of the stub shares while it runs: the agent connections, the whitelist in
//! force, the token verifier, the audit log, the limits and the metrics.

use std::sync::Arc;
use std::time::Duration;

use super::audit::AuditLog;
use super::limits;
use super::metrics::StubMetrics;
use super::registry::Registry;
use crate::identity::token::TokenVerifier;
use crate::identity::whitelist::WhitelistHandle;

/// State shared by the agent listener, the front door and the whitelist reload.
#[derive(Debug)]
pub struct StubState {
    pub registry: Registry,
    pub whitelist: WhitelistHandle,
    pub tokens: TokenVerifier,
    pub audit: AuditLog,
    pub limits: Arc<limits::Counters>,
    /// A response left unread this long is dropped (`None`: never).
    pub stalled_reader_timeout: Option<Duration>,
    pub metrics: Arc<StubMetrics>,
}

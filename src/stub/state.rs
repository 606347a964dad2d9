//! What every part of the stub shares while it runs: the agent connections, the whitelist in
//! force, the token verifier, the audit log, the limits, the metrics, and the replica's view of
//! the hub (members and peer routes).

use std::sync::Arc;

use super::audit::AuditLog;
use super::hub_view::HubView;
use super::limits;
use super::metrics::StubMetrics;
use super::registry::Registry;
use super::unread::Unread;
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
    /// Responses on their way to callers, and the ones their callers leave unread.
    pub unread: Arc<Unread>,
    pub metrics: Arc<StubMetrics>,
    /// This replica among the hub's replicas.
    pub hub: HubView,
}

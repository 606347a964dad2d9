//! The console's audit log: one JSON line per decision (time, caller address, user and groups
//! as the hub said, clusters asked for, allowed and refused, the answer's status, the token's
//! id, and why when refused), to stdout, a file, or nowhere. Decisions are few (one per token
//! lifetime per user), so a line is written at once, whole, with one `write_all`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;

pub use crate::audit_target::AuditTarget;

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub time: String,
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub asked: Vec<String>,
    pub allowed: Vec<String>,
    pub refused: Vec<String>,
    pub status: u16,
    /// The minted token's `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Decision {
    pub fn new(remote: SocketAddr) -> Decision {
        Decision {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            remote: remote.to_string(),
            user: None,
            groups: Vec::new(),
            asked: Vec::new(),
            allowed: Vec::new(),
            refused: Vec::new(),
            status: 0,
            jti: None,
            reason: String::new(),
        }
    }
}

/// Writes decisions.
pub struct DecisionLog(Option<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DecisionLog").field(&self.0.is_some()).finish()
    }
}

impl DecisionLog {
    pub fn open(target: &AuditTarget) -> std::io::Result<DecisionLog> {
        let sink: Option<Box<dyn Write + Send>> = match target {
            AuditTarget::Off => None,
            AuditTarget::Stdout => Some(Box::new(std::io::stdout())),
            AuditTarget::File(path) => {
                Some(Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?))
            }
        };
        Ok(DecisionLog(sink.map(Mutex::new)))
    }

    pub fn write(&self, decision: &Decision) {
        let Some(sink) = &self.0 else { return };
        let mut line = serde_json::to_vec(decision).expect("serializable");
        line.push(b'\n');
        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "cannot write the console's audit log");
        }
    }
}

//! The stub's audit log: one JSON line per front-door request (time, request id, user, groups,
//! cluster, agent, verb, path, status, bytes, duration), written when the response ends, to a
//! file or stdout. Lines go through a bounded queue to one writer thread, so a slow disk delays
//! no request; if the queue overflows, lines are dropped and counted
//! (`tether_audit_failures_total{reason="queue_full"}`). A failed write (a full disk) is counted
//! too, never leaves half a line in the file, and with `--audit-required` makes the stub refuse
//! requests until a write works again.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

pub use crate::audit_target::AuditTarget;

/// One request, as the audit log records it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub time: String,
    pub request_id: String,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub cluster: Option<String>,
    pub agent: Option<String>,
    /// The replica of the hub this request was forwarded to (it held the cluster's agent
    /// connection; this one did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The replica of the hub that forwarded this request here (from its front door).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<String>,
    /// `kubectl --as` and `--as-group`: whom the caller asked to act as (the agent let it only
    /// if the cluster's API server said the caller may).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub as_groups: Vec<String>,
    pub verb: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: u64,
}

const QUEUE: usize = 4096;

/// The audit log's sending half; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    sender: Option<std::sync::mpsc::SyncSender<String>>,
    /// Set while the last write failed (a full disk, say), cleared by the next that works.
    failing: Arc<AtomicBool>,
    /// Refuse requests while `failing` (`--audit-required`).
    required: bool,
    metrics: Arc<super::metrics::StubMetrics>,
}

/// Where the writer thread puts lines.
enum Sink {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Sink {
    /// Writes one whole line, or nothing: a write that fails half way (the disk filled up) is
    /// cut back to where it started, so the file never holds half a record. Should that fail
    /// too, the next line starts on a fresh line (`torn`).
    fn write_line(&mut self, line: &str, torn: &mut bool) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(line.as_bytes()).and_then(|_| out.flush()),
            Sink::File(file) => {
                let before = file.metadata()?.len();
                let written = if *torn {
                    file.write_all(b"\n").and_then(|_| file.write_all(line.as_bytes()))
                } else {
                    file.write_all(line.as_bytes())
                };
                match written {
                    Ok(()) => {
                        *torn = false;
                        Ok(())
                    }
                    Err(e) => {
                        if file.set_len(before).is_err() {
                            *torn = true;
                        }
                        Err(e)
                    }
                }
            }
        }
    }
}

impl AuditLog {
    /// Opens the target (creating the file) and starts its writer thread. With `required`,
    /// [`AuditLog::unavailable`] says when requests are to be refused.
    pub fn open(
        target: &AuditTarget,
        required: bool,
        metrics: Arc<super::metrics::StubMetrics>,
    ) -> std::io::Result<AuditLog> {
        let failing = Arc::new(AtomicBool::new(false));
        let mut sink = match target {
            AuditTarget::Off => return Ok(AuditLog { sender: None, failing, required: false, metrics }),
            AuditTarget::Stdout => Sink::Stdout(std::io::stdout()),
            AuditTarget::File(path) => Sink::File(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let (flag, counted) = (failing.clone(), metrics.clone());
        std::thread::Builder::new().name("audit".into()).spawn(move || {
            let mut torn = false;
            for line in receiver {
                // One write per line, so readers (tail -f, tests) see whole lines.
                match sink.write_line(&line, &mut torn) {
                    Ok(()) => {
                        if flag.swap(false, Ordering::Relaxed) {
                            tracing::info!("the audit log is written again");
                        }
                    }
                    Err(e) => {
                        counted.audit_failures.inc(&["write"]);
                        if !flag.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "cannot write the audit log; records are lost until it works again");
                        }
                    }
                }
            }
        })?;
        Ok(AuditLog { sender: Some(sender), failing, required, metrics })
    }

    /// Whether requests are to be refused now: `--audit-required`, and the audit log cannot be
    /// written.
    pub fn unavailable(&self) -> bool {
        self.required && self.failing.load(Ordering::Relaxed)
    }

    /// Queues a record.
    pub fn write(&self, record: &Record) {
        let Some(sender) = &self.sender else { return };
        let mut line = serde_json::to_string(record).expect("records serialise");
        line.push('\n');
        if sender.try_send(line).is_err() {
            self.metrics.audit_failures.inc(&["queue_full"]);
            tracing::warn!("audit queue full: audit line dropped");
        }
    }
}

/// A record being filled in while its request runs; written when dropped (the response body
/// ended, or the caller went away).
pub struct Pending {
    pub record: Record,
    started: Instant,
    log: AuditLog,
    metrics: Arc<super::metrics::StubMetrics>,
    /// The cluster may label metrics: set once a verified token allows it, so that made-up
    /// cluster names in unauthenticated paths cannot grow the metrics without bound.
    pub cluster_vouched: bool,
}

impl Pending {
    pub fn new(
        log: AuditLog,
        metrics: Arc<super::metrics::StubMetrics>,
        request_id: &str,
        verb: &str,
        path: &str,
    ) -> Pending {
        let record = Record {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            request_id: request_id.into(),
            verb: verb.into(),
            path: path.into(),
            ..Record::default()
        };
        Pending { record, started: Instant::now(), log, metrics, cluster_vouched: false }
    }
}

impl Pending {
    /// Adds response body bytes (a method, so that closures capture the whole record and it is
    /// written when they are dropped, not when the field is copied out).
    pub fn count_bytes(&mut self, n: usize) {
        self.record.bytes += n as u64;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.record.duration_ms = elapsed.as_millis() as u64;
        self.log.write(&self.record);
        let cluster = match (&self.record.cluster, self.cluster_vouched) {
            (Some(cluster), true) => cluster.as_str(),
            _ => "unknown",
        };
        self.metrics.requests.inc(&[cluster, &self.record.status.to_string()]);
        self.metrics.duration.observe(&[cluster], elapsed.as_secs_f64());
        self.metrics.response_bytes.add(&[cluster], self.record.bytes);
    }
}

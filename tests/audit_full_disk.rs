//! The audit log on a full disk: every failed write is counted in a metric, the file never holds
//! half a record (after space comes back, every line is one whole JSON record), and with
//! `--audit-required` the stub refuses requests (503 Status) while it cannot write, and serves
//! again once it can. The disk is a tiny tmpfs this test mounts (root only; elsewhere it prints
//! `SKIPPED` and passes) and unmounts.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use support::admin::{admin_addr, sample, scrape_until};
use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, start_agent};

/// A small tmpfs mounted for the test, unmounted when dropped.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> Option<TinyDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tether-test", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Some(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with one file, to the last byte it takes.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = [0u8; 4096];
        while file.write(&block).is_ok_and(|n| n > 0) {}
        while file.write(&block[..1]).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_never_leaves_half_a_record_and_audit_required_refuses_meanwhile() {
    let Some(disk) = TinyDisk::mount() else { return };
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let (lenient_log, strict_log) = (disk.path().join("lenient.log"), disk.path().join("strict.log"));
    let mut lenient =
        StubProc::start_with(&pki, &["--audit-log", lenient_log.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"])
            .await;
    let strict = StubProc::start_with(&pki, &["--audit-log", strict_log.to_str().unwrap(), "--audit-required"]).await;
    let admin = admin_addr(&lenient.proc.wait_for("admin listening").await);
    let _agents = [
        start_agent(&pki, &lenient, "dev", "agent-0", &upstream.url()).await,
        start_agent(&pki, &strict, "dev", "agent-0", &upstream.url()).await,
    ];
    let client = front_client(&pki, false);
    let get = |stub: &StubProc, i: usize| format!("{}/clusters/dev/echo/{i}", stub.url);
    for stub in [&lenient, &strict] {
        assert_eq!(call(&client, "GET", &get(stub, 0), "").await.0, 200);
    }

    let filler = disk.fill();
    // The lenient stub serves on and counts every record it loses.
    for i in 1..=40 {
        assert_eq!(call(&client, "GET", &get(&lenient, i), "").await.0, 200);
    }
    let failures = r#"tether_audit_failures_total{reason="write"}"#;
    let metrics = scrape_until(&admin, failures, |m| sample(m, failures).is_some_and(|n| n >= 1.0)).await;
    eprintln!("lenient stub on a full disk: {} records lost", sample(&metrics, failures).unwrap());
    // The strict one refuses once a write has failed; the refusal says why.
    let mut refused = None;
    for i in 1..=40 {
        let (status, _, body) = call(&client, "GET", &get(&strict, i), "").await;
        if status == 503 {
            refused = Some(String::from_utf8_lossy(&body).into_owned());
            break;
        }
        assert_eq!(status, 200);
    }
    let refused = refused.expect("with --audit-required, a full disk refuses requests");
    assert!(refused.contains("cannot write its audit log"), "{refused}");
    let served = upstream.requests();
    assert_eq!(call(&client, "GET", &get(&strict, 99), "").await.0, 503, "refused while the disk stays full");
    assert_eq!(upstream.requests(), served, "a refused request reaches no upstream");

    // Space again: the strict stub writes its next record (a refusal's) and serves again.
    std::fs::remove_file(filler).unwrap();
    // (The first refusal's record is written a moment after its response: a bounded few tries.)
    let mut statuses = Vec::new();
    for i in 100..120 {
        statuses.push(call(&client, "GET", &get(&strict, i), "").await.0);
        if statuses.last() == Some(&200) {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&200), "serving again once the audit log is written: {statuses:?}");
    for i in 100..103 {
        assert_eq!(call(&client, "GET", &get(&lenient, i), "").await.0, 200);
    }
    // Whole records only, in both files, also around the failures.
    for log in [&lenient_log, &strict_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert!(record["request_id"].is_string(), "{line}");
        }
    }
}

//! The whitelist reloads while the stub runs, on change and on SIGHUP: removing a fingerprint
//! closes that agent's live connection (code `Revoked`) and refuses its reconnects; adding it
//! back lets it in again. A bad day changes nothing: a file that does not parse, an emptied or
//! half-rewritten file (only SIGHUP may revoke everyone), a path to a device or a huge file.

mod support;

use std::io::Write;

use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, start_agent};
use tether::identity::files::{self, Mode};

const REVOKED: &str = "certificate was removed from the stub's whitelist";

async fn status(pki: &Pki, stub: &StubProc) -> u16 {
    call(&front_client(pki, false), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0
}

fn write_whitelist(pki: &Pki, text: &str) {
    files::write_atomic(&pki.dir.whitelist(), text.as_bytes(), Mode::Public).unwrap();
}

#[tokio::test]
async fn removing_a_fingerprint_cuts_the_agent_off_and_adding_it_back_lets_it_in() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let registered = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    let other = pki.agent("prod", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    assert_eq!(status(&pki, &stub).await, 200);

    write_whitelist(&pki, &format!("# dev removed\nprod agent-0 {other}\n"));
    stub.proc.wait_for("closing connection: certificate removed from the whitelist").await;
    agent.wait_for(REVOKED).await;
    agent.wait_for("certificate not in the stub's whitelist").await;
    assert_eq!(status(&pki, &stub).await, 503);
    assert_eq!(upstream.requests(), 1);

    write_whitelist(&pki, &registered);
    agent.wait_for_count("connected to stub", 2).await;
    assert_eq!(status(&pki, &stub).await, 200);
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn an_emptied_or_rewritten_file_revokes_no_one_but_sighup_may() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let registered = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;

    // Emptied in place (truncated), as an editor or `>` does before writing.
    std::fs::write(pki.dir.whitelist(), "").unwrap();
    let line = stub.proc.wait_for("whitelist not reloaded: the file now lists no agent").await;
    assert!(line.contains("send SIGHUP"), "{line}");
    assert_eq!(status(&pki, &stub).await, 200, "the list in force stays");
    // Written back in place, in two pieces: whatever the stub reads, no one is revoked.
    let (head, tail) = registered.split_at(registered.len() / 2);
    std::fs::write(pki.dir.whitelist(), head).unwrap();
    std::fs::OpenOptions::new().append(true).open(pki.dir.whitelist()).unwrap().write_all(tail.as_bytes()).unwrap();
    stub.proc.wait_for("whitelist reloaded").await;
    assert_eq!(status(&pki, &stub).await, 200);
    assert_eq!(agent.count(REVOKED), 0);
    assert_eq!(stub.proc.count("agent disconnected"), 0);

    // On purpose: empty it and say so.
    std::fs::write(pki.dir.whitelist(), "").unwrap();
    stub.proc.signal("HUP");
    agent.wait_for(REVOKED).await;
    assert_eq!(status(&pki, &stub).await, 503);
}

#[tokio::test]
async fn a_whitelist_path_to_a_device_or_a_huge_file_is_never_read() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    let path = pki.dir.whitelist();
    let kept = path.with_extension("kept");
    std::fs::rename(&path, &kept).unwrap();

    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    stub.proc.signal("HUP");
    let line = stub.proc.wait_for("whitelist not reloaded").await;
    assert!(line.contains("not a regular file"), "{line}");
    assert_eq!(status(&pki, &stub).await, 200);

    std::fs::remove_file(&path).unwrap();
    let huge = std::fs::File::create(&path).unwrap();
    huge.set_len(tether::identity::whitelist::MAX_FILE_BYTES + 1).unwrap();
    stub.proc.signal("HUP");
    stub.proc.wait_for_count("whitelist not reloaded", 2).await;
    assert!(stub.proc.log().contains("a whitelist may have"), "{}", stub.proc.log());
    assert_eq!(status(&pki, &stub).await, 200);
    // The stub read neither: its memory stayed small.
    assert!(stub.proc.peak_rss() < 64 << 20, "stub peaked at {} MiB", stub.proc.peak_rss() >> 20);

    // A stub starting with such a whitelist refuses to, naming it.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let certs = pki.path().to_str().unwrap();
    let out = std::process::Command::new(support::tether_bin())
        .args(["stub", "--certs", certs, "--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("whitelist: not a regular file"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_list_in_force() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--no-watch-whitelist"]).await;
    let mut agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;

    // Without the watcher, a change waits for SIGHUP; a malformed file is refused whole.
    write_whitelist(&pki, "# broken\ndev agent-0 sha256:00\n");
    stub.proc.signal("HUP");
    let line = stub.proc.wait_for("whitelist not reloaded").await;
    assert!(line.contains("whitelist:2:") && line.contains("not a fingerprint"), "{line}");
    assert_eq!(status(&pki, &stub).await, 200, "the previous list stays in force");
    assert_eq!(agent.count(REVOKED), 0);

    write_whitelist(&pki, "");
    stub.proc.signal("HUP");
    agent.wait_for(REVOKED).await;
    assert_eq!(status(&pki, &stub).await, 503);
}

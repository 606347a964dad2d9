//! The whitelist reloads while the stub runs, on change and on SIGHUP: removing a fingerprint
//! closes that agent's live connection (code `Revoked`) and refuses its reconnects; adding it
//! back lets it in again; a file that does not parse changes nothing.

mod support;

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
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    assert_eq!(status(&pki, &stub).await, 200);

    write_whitelist(&pki, "# everyone removed\n");
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

//! An agent rotates its certificate from new files without a gap in service: it dials a second
//! connection with the new certificate, and drains the old one only once the stub has welcomed
//! the new one. A new certificate the stub refuses leaves the old connection serving, and is
//! tried again until the whitelist lets it in.

mod support;

use support::load::{start_load, stop_load};
use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, spawn_agent};
use tether::identity::certs::{Minted, Validity};
use tether::identity::files::{self, Mode};
use tether::identity::whitelist::{self, Entry};

fn mint(pki: &Pki) -> Minted {
    pki.signer().issue_agent("dev", "agent-0", Validity::days(1)).unwrap()
}

fn entry(minted: &Minted) -> Entry {
    Entry { cluster: "dev".into(), name: "agent-0".into(), fingerprint: minted.fingerprint }
}

/// Replaces the agent's certificate and key files the way a script would: one file, then the
/// other (for a moment, the new certificate sits beside the old key).
fn install(pki: &Pki, minted: &Minted) {
    minted.save(&pki.dir.agent_cert("dev", "agent-0"), &pki.dir.agent_key("dev", "agent-0")).unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_takes_over_under_load_without_a_failed_request() {
    let pki = Pki::new();
    let old = pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("connected to stub").await;
    let (outcomes, load) = start_load(&pki, &stub, 6, true);
    outcomes.wait_ok(50).await;

    // 1. The new fingerprint joins the whitelist; 2. the files are replaced.
    let new = mint(&pki);
    whitelist::register(&pki.dir.whitelist(), &entry(&new)).unwrap();
    stub.proc.wait_for_count("whitelist reloaded", 1).await;
    install(&pki, &new);
    let line = agent.wait_for("certificate rotated").await;
    assert!(line.contains(&old.to_string()) && line.contains(&new.fingerprint.to_string()), "{line}");
    agent.wait_for("drained: no new requests").await;
    stub.proc.wait_for("agent disconnected").await;
    outcomes.wait_more(50).await;

    // 3. The old fingerprint leaves the whitelist: nothing is cut, since nothing uses it.
    files::write_atomic(&pki.dir.whitelist(), format!("{}\n", entry(&new)).as_bytes(), Mode::Public).unwrap();
    stub.proc.wait_for_count("whitelist reloaded", 2).await;
    outcomes.wait_more(50).await;

    stop_load(&outcomes, load).await;
    outcomes.assert_all_served();
    assert_eq!(stub.proc.count("closing connection: certificate removed from the whitelist"), 0);
    assert_eq!(agent.count("disconnected from stub"), 0, "the agent was never without a connection");
}

#[tokio::test]
async fn a_new_certificate_the_stub_refuses_leaves_the_old_connection_serving_until_it_is_whitelisted() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("connected to stub").await;
    let client = front_client(&pki, true);
    let echo = format!("{}/clusters/dev/echo", stub.url);

    // Files that do not belong together are reported by name and change nothing.
    let stray = mint(&pki);
    std::fs::write(pki.dir.agent_key("dev", "agent-0"), &stray.key_pem).unwrap();
    let line = agent.wait_for("new certificate files are not usable").await;
    assert!(line.contains("agent-0.crt") && line.contains("agent-0.key"), "{line}");
    assert_eq!(call(&client, "GET", &echo, "").await.0, 200);

    // A whole new certificate that the whitelist lacks: refused, and the old connection stays.
    let new = mint(&pki);
    install(&pki, &new);
    let line = agent.wait_for("the stub does not accept the new certificate").await;
    assert!(line.contains(&new.fingerprint.to_string()) && line.contains("not in the stub's whitelist"), "{line}");
    assert_eq!(call(&client, "GET", &echo, "").await.0, 200);

    // Once it is whitelisted, the next try takes over.
    whitelist::register(&pki.dir.whitelist(), &entry(&new)).unwrap();
    agent.wait_for("certificate rotated").await;
    stub.proc.wait_for("agent disconnected").await;
    assert_eq!(call(&client, "GET", &echo, "").await.0, 200);
    assert_eq!(agent.count("disconnected from stub"), 0);
}

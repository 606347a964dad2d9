//! An agent whose only way out is an HTTP proxy (a network namespace of the test's own whose one
//! neighbour runs tinyproxy; see `support::egress`): `--transport auto` goes straight to TCP
//! through the proxy, with credentials from the proxy URL that never reach the log; a proxy
//! that refuses, or wants other credentials, is named in the agent's log with its answer; a
//! proxy that dies mid-connection costs the connection, and the agent is back when the proxy is.

mod support;

use std::process::Command;

use support::egress::{Egress, ProxyRules};
use support::upstream::Upstream;
use support::{Pki, Proc, StubProc, call, front_client, tether_bin};

/// An agent of `dev` inside the egress namespace, dialling the stub's agent listener,
/// with `env` (the proxy variables) and extra arguments.
fn agent_behind(
    egress: &Egress,
    pki: &Pki,
    stub: &StubProc,
    upstream: &Upstream,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Proc {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &egress.netns, tether_bin(), "agent", "--certs", pki.path().to_str().unwrap()]);
    command.args(["--cluster", "dev", "--name", "agent-0", "--stub", &stub.quic, "--server-name", "localhost"]);
    command.args(["--upstream", &upstream.url()]).args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    Proc::spawn_any("agent", &mut command)
}

struct Setup {
    egress: Egress,
    pki: Pki,
    stub: StubProc,
    upstream: Upstream,
}

async fn setup() -> Option<Setup> {
    let egress = Egress::start()?;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let stub = StubProc::start_at(&pki, &format!("{}:0", egress.stub_address), "127.0.0.1:0", &[]).await;
    // The cluster's API server is on the agent's side of the proxy.
    let upstream = Upstream::start_on(&format!("{}:0", egress.gateway)).await;
    // No direct way to the stub: its TCP port is not reachable from the namespace.
    assert!(!egress.reaches(&stub.quic), "the namespace reaches the stub without the proxy");
    Some(Setup { egress, pki, stub, upstream })
}

async fn served(s: &Setup) -> u16 {
    call(&front_client(&s.pki, true), "GET", &format!("{}/clusters/dev/echo/x", s.stub.url), "").await.0
}

#[tokio::test]
async fn behind_a_proxy_auto_goes_straight_to_tcp_through_it_with_hidden_credentials() {
    let Some(s) = setup().await else { return };
    let rules = ProxyRules { credentials: Some(("alice".into(), "s3cret-pw".into())), ..Default::default() };
    let proxy = s.egress.proxy(&rules, None).await;
    let url = format!("http://alice:s3cret-pw@{}", proxy.address);
    let mut agent = agent_behind(&s.egress, &s.pki, &s.stub, &s.upstream, &[("HTTPS_PROXY", &url)], &[]);
    let connected = agent.wait_for("connected to stub").await;
    assert!(connected.contains("transport=tcp"), "{connected}");
    assert!(connected.contains(&format!("via_proxy=\"http://alice:***@{}\"", proxy.address)), "{connected}");
    assert_eq!(agent.count("cannot connect to stub"), 0, "auto dialled nothing before the proxy:\n{}", agent.log());
    assert_eq!(served(&s).await, 200);
    assert!(!agent.log().contains("s3cret-pw"), "the proxy password reached the log:\n{}", agent.log());
    assert!(proxy.proc.log().contains("CONNECT"), "the proxy carried the connection:\n{}", proxy.proc.log());
}

#[tokio::test]
async fn a_proxy_that_refuses_or_wants_other_credentials_is_named_with_its_answer() {
    let Some(s) = setup().await else { return };
    // Only port 443 may be tunnelled to: the stub's port is refused.
    let strict = s.egress.proxy(&ProxyRules { connect_ports: vec![443], ..Default::default() }, None).await;
    let url = format!("http://{}", strict.address);
    let mut agent =
        agent_behind(&s.egress, &s.pki, &s.stub, &s.upstream, &[], &["--proxy", &url, "--transport", "tcp"]);
    let refused = agent.wait_for("cannot connect to stub").await;
    assert!(refused.contains(&format!("proxy {url} refused CONNECT {}: 403", s.stub.quic)), "{refused}");
    drop(agent);

    let guarded = ProxyRules { credentials: Some(("alice".into(), "right".into())), ..Default::default() };
    let guarded = s.egress.proxy(&guarded, None).await;
    let url = format!("http://alice:wrong@{}", guarded.address);
    let mut agent = agent_behind(&s.egress, &s.pki, &s.stub, &s.upstream, &[("HTTPS_PROXY", &url)], &[]);
    let refused = agent.wait_for("cannot connect to stub").await;
    assert!(refused.contains("wants credentials") && refused.contains("401 Unauthorized"), "{refused}");
    assert!(!agent.log().contains("wrong"), "the password reached the log:\n{}", agent.log());

    // NO_PROXY naming the stub: dialled directly, which here cannot work, and says so.
    let url = format!("http://{}", strict.address);
    let mut agent = agent_behind(
        &s.egress,
        &s.pki,
        &s.stub,
        &s.upstream,
        &[("HTTPS_PROXY", &url), ("NO_PROXY", "localhost,10.212.0.0/16")],
        &["--transport", "tcp"],
    );
    agent.wait_for("the stub is listed in NO_PROXY").await;
    let direct = agent.wait_for("cannot connect to stub").await;
    assert!(direct.contains(&format!("cannot dial {} over TCP", s.stub.quic)), "{direct}");
}

#[tokio::test]
async fn a_proxy_that_dies_mid_connection_costs_the_connection_and_the_agent_returns_with_it() {
    let Some(s) = setup().await else { return };
    let proxy = s.egress.proxy(&ProxyRules::default(), None).await;
    let url = format!("http://{}", proxy.address);
    let mut agent = agent_behind(&s.egress, &s.pki, &s.stub, &s.upstream, &[("HTTPS_PROXY", &url)], &[]);
    agent.wait_for("connected to stub").await;
    assert_eq!(served(&s).await, 200);

    let port: u16 = proxy.address.rsplit_once(':').unwrap().1.parse().unwrap();
    proxy.proc.signal("KILL");
    let lost = agent.wait_for("disconnected from stub").await;
    assert!(lost.contains("slot="), "{lost}");
    let unreachable = agent.wait_for(&format!("cannot reach proxy {url}")).await;
    assert!(unreachable.contains("transport=tcp"), "{unreachable}");
    drop(proxy);

    // The proxy is back on its address: so is the agent, through it.
    let _proxy = s.egress.proxy(&ProxyRules::default(), Some(port)).await;
    agent.wait_for_count("connected to stub", 2).await;
    assert_eq!(served(&s).await, 200);
}

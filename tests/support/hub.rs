//! Stub replicas of one hub for a test: each on an address of its own in 127.0.0.0/8
//! (127.0.0.1, 127.0.0.2, ...: every one of them is the loopback), with its front door, agent
//! port, peer port and admin listener there.

use super::{PATIENCE, Pki, Proc, StubProc};

/// A port free on `ip` for both UDP and TCP now (the kernel's pick for UDP, checked for TCP):
/// for the peer port of a static member list, which must be known before the replica starts.
pub fn free_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

/// One running replica.
pub struct Replica {
    pub id: String,
    pub ip: String,
    pub stub: StubProc,
    /// `HOST:PORT` of its admin listener.
    pub admin: String,
}

impl Replica {
    /// Starts replica `id` on `ip` with `members` (`static:...` or `kubernetes:NS`), its peer
    /// port `peer_port` (0: any), and `extra` flags. Waits until it listens.
    pub async fn start(pki: &Pki, id: &str, ip: &str, members: &str, peer_port: u16, extra: &[&str]) -> Replica {
        Replica::start_with_agents_on(pki, id, ip, &format!("{ip}:0"), members, peer_port, extra).await
    }

    /// Like [`Replica::start`], with the agent listener (QUIC and TCP) on `quic`.
    pub async fn start_with_agents_on(
        pki: &Pki,
        id: &str,
        ip: &str,
        quic: &str,
        members: &str,
        peer_port: u16,
        extra: &[&str],
    ) -> Replica {
        let any = format!("{ip}:0");
        let peer = format!("{ip}:{peer_port}");
        let mut args = vec!["--id", id, "--members", members, "--peer-listen", &peer, "--admin-listen", &any];
        args.extend_from_slice(extra);
        let mut stub = StubProc::start_at(pki, quic, &any, &args).await;
        let line = stub.proc.wait_for("admin listening").await;
        let admin = super::admin::admin_addr(&line);
        Replica { id: id.to_owned(), ip: ip.to_owned(), stub, admin }
    }

    /// The replica's audit lines (JSON objects printed on its stdout) whose `key` is `value`.
    pub fn audit_lines_with(&self, key: &str, value: &str) -> Vec<serde_json::Value> {
        self.stub
            .proc
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get(key).and_then(|x| x.as_str()) == Some(value))
            .collect()
    }

    /// Waits (bounded) until a GET of `path` through this replica's front door answers 200.
    pub async fn until_ok(&self, client: &super::FrontClient, path: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, _, body) = super::call(client, "GET", &format!("{}{path}", self.stub.url), "").await;
            if status == 200 {
                return;
            }
            let body = String::from_utf8_lossy(&body);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} through {} never answered 200 (last {status}: {body})",
                self.id
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl std::ops::Deref for Replica {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.stub.proc
    }
}

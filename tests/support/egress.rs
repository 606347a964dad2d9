//! A cluster network whose only way out is an HTTP proxy: a network namespace of the test's own
//! (the agent's side), joined to this machine by a veth pair and nothing else, and a real proxy
//! (tinyproxy, from Debian's `tinyproxy-bin`) on this machine's end of the pair.
//!
//! ```text
//!   namespace tether-px-N                 this machine
//!   10.211.N.2 ---------(veth)--------- 10.211.N.1   tinyproxy :PORT, the upstream
//!   agent                                10.212.N.1   stub's agent listener
//! ```
//!
//! The stub's agent listener is on a second address of this machine's end of the pair, outside
//! the pair's subnet, which the namespace has no route to (it has none beyond that subnet): the
//! proxy is the only way from the agent to the stub. Everything goes when the value is
//! dropped: the proxy (by its PID), the namespace and the pair with its addresses. Needs root, `ip` and `tinyproxy`; otherwise
//! [`Egress::start`] says why and returns `None`.

use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use super::Proc;
use super::host::{self, run};

/// Why this machine cannot make the proxied network, if it cannot.
pub fn unavailable() -> Option<String> {
    host::missing(
        "network namespaces",
        &[("ip", "-V", ""), ("tinyproxy", "-v", "scripts/test.sh installs tinyproxy-bin as root")],
    )
}

/// The agent's namespace and its one neighbour, this machine's end of the pair.
pub struct Egress {
    pub netns: String,
    host_veth: String,
    /// Where the stub's agent listener goes: `10.212.N.1`, reachable only through the proxy.
    pub stub_address: String,
    /// This machine's end of the pair, where the proxy listens: `10.211.N.1`.
    pub gateway: String,
    dir: tempfile::TempDir,
}

/// What the proxy is told.
#[derive(Debug, Clone, Default)]
pub struct ProxyRules {
    /// `BasicAuth USER PASSWORD`: CONNECT needs these credentials.
    pub credentials: Option<(String, String)>,
    /// `ConnectPort` lines: CONNECT only to these ports (none: any).
    pub connect_ports: Vec<u16>,
}

/// A running tinyproxy.
pub struct ProxyProc {
    pub proc: Proc,
    /// `10.211.N.1:PORT`.
    pub address: String,
}

impl Egress {
    pub fn start() -> Option<Egress> {
        if let Some(reason) = unavailable() {
            eprintln!("SKIPPED: cannot make a network whose only way out is a proxy: {reason}");
            return None;
        }
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let taken = String::from_utf8_lossy(&listed.stdout).into_owned();
        let index = loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let index = ((std::process::id() as u8).wrapping_mul(7).wrapping_add(n)) % 250 + 2;
            if !taken.lines().any(|l| l.split_whitespace().next() == Some(&format!("tether-px-{index}"))) {
                break index;
            }
        };
        let egress = Egress {
            netns: format!("tether-px-{index}"),
            host_veth: format!("tpxh{index}"),
            stub_address: format!("10.212.{index}.1"),
            gateway: format!("10.211.{index}.1"),
            dir: tempfile::tempdir().unwrap(),
        };
        let (ns, host_veth) = (&egress.netns, &egress.host_veth);
        let inner = format!("tpxn{index}");
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "link", "add", host_veth, "type", "veth", "peer", "name", &inner]);
        run(&["ip", "link", "set", &inner, "netns", ns]);
        run(&["ip", "addr", "add", &format!("{}/24", egress.gateway), "dev", host_veth]);
        run(&["ip", "link", "set", host_veth, "up"]);
        run(&["ip", "-n", ns, "addr", "add", &format!("10.211.{index}.2/24"), "dev", &inner]);
        run(&["ip", "-n", ns, "link", "set", &inner, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // The stub's address sits on this machine's end of the pair, outside the pair's
        // subnet: the namespace has no route to it.
        run(&["ip", "addr", "add", &format!("{}/32", egress.stub_address), "dev", host_veth]);
        Some(egress)
    }

    /// A port free on the gateway address now, for a proxy to listen on (tinyproxy takes no
    /// port 0).
    fn free_port(&self) -> u16 {
        std::net::TcpListener::bind((self.gateway.as_str(), 0)).unwrap().local_addr().unwrap().port()
    }

    /// Starts tinyproxy on the gateway with `rules` (on `port`, or a free one), and waits until
    /// it accepts connections.
    pub async fn proxy(&self, rules: &ProxyRules, port: Option<u16>) -> ProxyProc {
        let port = port.unwrap_or_else(|| self.free_port());
        let mut conf = format!(
            "Port {port}\nListen {gw}\nTimeout 600\nMaxClients 100\nLogLevel Info\nAllow {net}.0/24\nDisableViaHeader Yes\n",
            gw = self.gateway,
            net = self.gateway.rsplit_once('.').unwrap().0,
        );
        if let Some((user, password)) = &rules.credentials {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        for allowed in &rules.connect_ports {
            conf.push_str(&format!("ConnectPort {allowed}\n"));
        }
        let path = self.dir.path().join(format!("tinyproxy-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut proc =
            Proc::spawn_any("tinyproxy", Command::new("tinyproxy").args(["-d", "-c", path.to_str().unwrap()]));
        proc.wait_for("Accepting connections").await;
        ProxyProc { proc, address: format!("{}:{port}", self.gateway) }
    }

    /// Adds nftables `rule`s to the namespace's output chain (its own table, gone with the
    /// namespace): `udp dport 7443 drop`, say.
    pub fn firewall(&self, rule: &str) {
        let ns = &self.netns;
        let nft = |args: &str| {
            let mut full = vec!["ip", "netns", "exec", ns, "nft"];
            full.extend(args.split_whitespace());
            run(&full);
        };
        if !self.has_table() {
            nft("add table inet tether");
            nft("add chain inet tether out { type filter hook output priority 0 ; }");
        }
        nft(&format!("add rule inet tether out {rule}"));
    }

    /// Removes every rule [`Egress::firewall`] added.
    pub fn open_firewall(&self) {
        if self.has_table() {
            run(&["ip", "netns", "exec", &self.netns, "nft", "flush", "chain", "inet", "tether", "out"]);
        }
    }

    fn has_table(&self) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "list", "table", "inet", "tether"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Whether a TCP connection from inside the namespace to `addr` succeeds (within 2 s).
    pub fn reaches(&self, addr: &str) -> bool {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "timeout", "2", "bash", "-c", &probe])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        // The pair goes with the namespace; its host end too.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_veth]).output();
    }
}

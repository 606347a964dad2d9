//! Load balancers in front of stub replicas, as a hub has them: for agents, a virtual address
//! made the way kube-proxy makes a Service (an nftables DNAT with a random choice among the
//! backends, conntrack keeping each flow on its backend), in a network namespace of the test's
//! own; for users, a real TCP load balancer (haproxy from Debian) that checks each replica's
//! `/readyz`.
//!
//! The namespace is the load balancer's machine: the host reaches it over a veth pair, and the
//! virtual address lives on its side. A packet to `VIP:PORT` enters it, is sent to a random
//! backend (`BACKEND:PORT`, an address on the host's end of the pair, where a replica's agent
//! listener binds) and masqueraded, so that the replies come back through it and conntrack
//! turns them back into the virtual address's. Everything it creates goes when it is dropped:
//! the namespace (with its nftables table), the veth pair (with the host's addresses on it).
//! Needs root, `ip` and `nft`; otherwise [`AgentLb::start`] says why and returns `None`.

use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use super::host::{self, run};
use super::{PATIENCE, Proc};

/// Why this machine cannot make the load balancers, if it cannot.
pub fn unavailable() -> Option<String> {
    let hint = "scripts/test.sh installs it as root";
    host::missing(
        "network namespaces and nftables",
        &[("ip", "-V", hint), ("nft", "--version", hint), ("haproxy", "-v", hint)],
    )
}

/// The agents' load balancer: a virtual address in a namespace of its own.
pub struct AgentLb {
    pub netns: String,
    host_veth: String,
    /// `10.210.N`: the pair's subnet.
    net: String,
    pub port: u16,
    backends: usize,
}

impl AgentLb {
    /// A load balancer for up to `backends` replicas (all in use at first), on a port that is
    /// free on every backend address (the same port on the virtual address).
    pub fn start(backends: usize) -> Option<AgentLb> {
        if let Some(reason) = unavailable() {
            eprintln!("SKIPPED: cannot make the hub's load balancers here: {reason}");
            return None;
        }
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let taken = String::from_utf8_lossy(&listed.stdout).into_owned();
        let index = loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let index = ((std::process::id() as u8).wrapping_mul(13).wrapping_add(n)) % 250 + 2;
            if !taken.contains(&format!("tether-lb-{index} "))
                && !taken.lines().any(|l| l == format!("tether-lb-{index}"))
            {
                break index;
            }
        };
        let mut lb = AgentLb {
            netns: format!("tether-lb-{index}"),
            host_veth: format!("tlbh{index}"),
            net: format!("10.210.{index}"),
            port: 0,
            backends,
        };
        let (ns, net, host_veth) = (&lb.netns, &lb.net, &lb.host_veth);
        let inner = format!("tlbn{index}");
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "link", "add", host_veth, "type", "veth", "peer", "name", &inner]);
        run(&["ip", "link", "set", &inner, "netns", ns]);
        run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", host_veth]);
        for i in 0..8 {
            run(&["ip", "addr", "add", &format!("{net}.{}/24", 11 + i), "dev", host_veth]);
        }
        run(&["ip", "link", "set", host_veth, "up"]);
        let exec = |args: &[&str]| run(&[&["ip", "netns", "exec", ns][..], args].concat());
        exec(&["ip", "link", "set", "lo", "up"]);
        exec(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", &inner]);
        exec(&["ip", "addr", "add", &format!("{}/32", lb.vip()), "dev", &inner]);
        exec(&["ip", "link", "set", &inner, "up"]);
        // Its own namespace's setting: gone with it.
        exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        lb.port = super::hub::free_port(&lb.backend(0));
        lb.set_backends(&(0..backends).collect::<Vec<_>>());
        Some(lb)
    }

    /// The address agents dial.
    pub fn vip(&self) -> String {
        format!("{}.100", self.net)
    }

    /// `VIP:PORT`.
    pub fn target(&self) -> String {
        format!("{}:{}", self.vip(), self.port)
    }

    /// The host-side address of backend `i`, where replica `i`'s agent listener binds.
    pub fn backend(&self, i: usize) -> String {
        assert!(i < 8);
        format!("{}.{}", self.net, 11 + i)
    }

    /// New flows go to these backends only (as kube-proxy does when endpoints come and go);
    /// flows already made stay on theirs.
    pub fn set_backends(&self, which: &[usize]) {
        let map: Vec<String> = which.iter().enumerate().map(|(k, i)| format!("{k} : {}", self.backend(*i))).collect();
        let (vip, port, n) = (self.vip(), self.port, which.len());
        let rules = format!(
            "table ip tether_lb {{}}\nflush table ip tether_lb\ntable ip tether_lb {{\n\
             chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
             ip daddr {vip} udp dport {port} dnat to numgen random mod {n} map {{ {map} }}\n\
             ip daddr {vip} tcp dport {port} dnat to numgen random mod {n} map {{ {map} }}\n}}\n\
             chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
             ip daddr {net}.0/24 masquerade\n}}\n}}\n",
            map = map.join(", "),
            net = self.net,
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft -f failed: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
    }

    /// How many backends it was made for.
    pub fn backends(&self) -> usize {
        self.backends
    }
}

impl Drop for AgentLb {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_veth]).output();
    }
}

/// haproxy in TCP mode in front of the replicas' front doors, checking each replica's
/// `/readyz` on its admin listener.
pub struct UserLb {
    proc: Proc,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl UserLb {
    /// `backends`: (name, front door `HOST:PORT`, admin `HOST:PORT`) of each replica.
    pub async fn start(backends: &[(String, String, String)]) -> UserLb {
        let dir = tempfile::tempdir().unwrap();
        let port = super::hub::free_port("127.0.0.1");
        let address = format!("127.0.0.1:{port}");
        let mut servers = String::new();
        for (name, front, admin) in backends {
            let admin_port = admin.rsplit_once(':').unwrap().1;
            servers.push_str(&format!("    server {name} {front} check port {admin_port} inter 500ms fall 2 rise 1\n"));
        }
        let config = format!(
            "global\n    log stderr format raw local0 info\n\
             defaults\n    mode tcp\n    log global\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    retries 2\n    option redispatch\n\
             frontend users\n    bind {address}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk\n    http-check send meth GET uri /readyz\n    http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let proc = Proc::spawn_any("haproxy", Command::new("haproxy").args(["-db", "-f", path.to_str().unwrap()]));
        // haproxy says nothing when it starts; a connection tells.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "haproxy did not listen on {address}:\n{}", proc.log());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        UserLb { proc, address, _dir: dir }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

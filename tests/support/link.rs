//! An emulated bad link (`tether link`) for a test: a network namespace for the stub, reached
//! over a lossy, delayed wire by agents and over a clean path by clients. Where links cannot be
//! made (not root, no /dev/net/tun, no `ip`), [`Link::start`] says why and returns `None`, and
//! the test returns early with that printed reason.

use std::sync::atomic::{AtomicU8, Ordering};

use super::Proc;

pub struct Link {
    pub proc: Proc,
    pub netns: String,
    pub index: u8,
}

/// Why this machine cannot make a link, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TUN devices need it)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

impl Link {
    /// A link with `loss` percent loss and `delay` each way (e.g. "10ms"), plus `extra` flags.
    pub async fn start(loss: f64, delay: &str, extra: &[&str]) -> Option<Link> {
        if let Some(reason) = unavailable() {
            eprintln!("SKIPPED: cannot emulate a lossy link here: {reason}");
            return None;
        }
        // Distinct per process and per link, so tests running side by side never collide.
        static NEXT: AtomicU8 = AtomicU8::new(0);
        // A namespace left behind by a killed run keeps its name taken: skip to a free one.
        let listed = std::process::Command::new("ip").args(["netns", "list"]).output();
        let taken = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let (index, netns) = loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let index = ((std::process::id() as u8).wrapping_mul(7).wrapping_add(n)) % 250 + 2;
            let netns = format!("tether-test-{index}");
            if !taken.lines().any(|l| l.split_whitespace().next() == Some(netns.as_str())) {
                break (index, netns);
            }
        };
        let (loss, index_text) = (loss.to_string(), index.to_string());
        let mut args = vec!["link", "--name", &netns, "--index", &index_text, "--loss", &loss, "--delay", delay];
        args.extend_from_slice(&["--lifetime", "10m"]);
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn("link", &args);
        proc.wait_for("link up").await;
        Some(Link { proc, netns, index })
    }

    /// Where agents dial the stub (across the lossy wire).
    pub fn lossy_addr(&self) -> String {
        format!("10.201.{}.1", self.index)
    }

    /// Where clients reach the stub (the clean path).
    pub fn clean_addr(&self) -> String {
        format!("10.202.{}.1", self.index)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SIGTERM lets the link take its namespace down; wait for that (bounded), then make sure.
        self.proc.signal("TERM");
        let deadline = std::time::Instant::now() + super::PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

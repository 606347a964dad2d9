//! Commands on this machine, for the tests that build networks of their own (namespaces, veth
//! pairs, nftables): run one that must succeed, and say what a root-only test is missing here.

use std::process::Command;

/// Runs `args` (a program and its arguments); panics with its stderr unless it succeeds.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Why a test that needs root (for `root_for`) and every one of `tools` cannot run here, or
/// `None`. Each tool is (program, an argument that makes it print its version and exit, what to
/// do when it is missing).
pub fn missing(root_for: &str, tools: &[(&str, &str, &str)]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!("not root ({root_for} need it)"));
    }
    tools
        .iter()
        .find(|(tool, arg, _)| Command::new(tool).arg(arg).output().is_err())
        .map(|(tool, _, hint)| if hint.is_empty() { format!("no `{tool}`") } else { format!("no `{tool}` ({hint})") })
}

//! What operators rely on at the command line. Every flag of every command can come from the environment, as the README says: each has a
//! `TETHER_*` variable (its long name, unless it had one of its own before), no two flags of a
//! command share one, and a real process takes them (`tether register` configured by the
//! environment alone). `tether register` refuses hostile values before writing anything. And
//! `--log-format json` logs parse line by line, with the request id as a key.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use support::tether_bin;

/// Every flag of every command, as (command path, long name, variable).
fn flags() -> Vec<(String, String, Option<String>)> {
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                if matches!(arg.get_action(), clap::ArgAction::Help | clap::ArgAction::Version) {
                    continue;
                }
                let variable = arg.get_env().map(|v| v.to_string_lossy().into_owned());
                out.push((path.to_owned(), long.to_owned(), variable));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    let mut command = tether::cli::command();
    command.build();
    walk(&command, "tether", &mut out);
    out
}

#[test]
fn every_flag_of_every_command_has_a_variable_named_after_it() {
    let flags = flags();
    assert!(flags.len() > 100, "only {} flags found", flags.len());
    let missing: Vec<String> =
        flags.iter().filter(|(_, _, v)| v.is_none()).map(|(c, l, _)| format!("{c} --{l}")).collect();
    assert!(missing.is_empty(), "flags without a variable: {missing:?}");
    // The variables named before the rule, kept so that no deployment breaks: each differs
    // from TETHER_<LONG> on purpose. Any other difference is a mistake.
    let historical = [
        "--audit-log reads TETHER_CONSOLE_AUDIT_LOG", // tether console, apart from the stub's
        "--dir reads TETHER_CERTS",                   // tether certs: the same directory as --certs
        "--listen reads TETHER_CONSOLE_LISTEN",       // tether console
        "--stub reads TETHER_STUB_URL",               // tether kubeconfig: a URL, not HOST:PORT
        "--ttl reads TETHER_CONSOLE_TTL",             // tether console, apart from token's --ttl
    ];
    let mut differ: Vec<String> = flags
        .iter()
        .filter_map(|(_, long, variable)| {
            let variable = variable.as_deref().unwrap();
            (variable != tether::cli::variable_for(long)).then(|| format!("--{long} reads {variable}"))
        })
        .collect();
    differ.sort();
    differ.dedup();
    assert_eq!(differ, historical, "flags whose variable is not TETHER_<LONG NAME>");
}

#[test]
fn no_two_flags_of_a_command_read_the_same_variable() {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for (command, long, variable) in flags() {
        if let Some(other) = seen.insert((command.clone(), variable.clone().unwrap()), long.clone()) {
            panic!("{command}: --{other} and --{long} both read {}", variable.unwrap());
        }
    }
}

fn tether(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(tether_bin());
    command.args(args);
    // Nothing from the caller's environment decides these runs.
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A certificate directory with a CA and a token issuer, as `tether register` needs.
fn cert_dir(dir: &Path) {
    let dir = dir.to_str().unwrap();
    for args in [["certs", "init", "--dir", dir], ["certs", "issuer", "--dir", dir]] {
        let out = tether(&args, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn register_takes_every_flag_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    cert_dir(tmp.path());
    let out = tether(
        &["register"],
        &[
            ("TETHER_CERTS", tmp.path().to_str().unwrap()),
            ("TETHER_CLUSTER", "edge-7"),
            ("TETHER_NAME", "relay"),
            ("TETHER_STUB", "hub.example.com:7443"),
            ("TETHER_IMAGE", "registry.local/tether:test"),
            ("TETHER_NAMESPACE", "tether-edge"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = text(&out.stdout);
    assert!(manifest.starts_with("# tether agent for cluster edge-7 (stub hub.example.com:7443)"), "{manifest}");
    assert!(manifest.contains("\"--name\", \"relay\""), "{manifest}");
    assert!(manifest.contains("image: \"registry.local/tether:test\""), "{manifest}");
    assert!(manifest.contains("namespace: \"tether-edge\""), "{manifest}");
    assert!(tmp.path().join("agents/edge-7/relay.crt").exists());
}

#[test]
fn register_refuses_hostile_values_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    cert_dir(tmp.path());
    let before = support::snapshot(tmp.path());
    let certs = tmp.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--stub", "hub:7443 (x)\nkind: Secret\n# :7443"], "--stub"),
        (&["--stub", "hub.example.com"], "no :PORT"),
        (&["--stub", "hub.example.com:7443", "--image", "img\n---\nkind: Pod"], "--image"),
        (&["--stub", "hub.example.com:7443", "--namespace", "a\nb"], "namespace"),
        (&["--stub", "hub.example.com:7443", "--cluster", "Dev\n# x"], "cluster"),
    ];
    for (extra, named) in cases {
        let mut args = vec!["register", "--certs", certs, "--cluster", "dev"];
        args.extend_from_slice(extra);
        let out = tether(&args, &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was taken:\n{}", text(&out.stdout));
        assert!(out.stdout.is_empty(), "{args:?} printed a manifest");
        assert!(stderr.contains(named), "{args:?}: the error does not name {named}: {stderr}");
        assert_eq!(support::snapshot(tmp.path()), before, "{args:?} changed the certificate directory");
    }
}

/// The JSON lines of a process's output, each parsed (a line that does not parse fails).
fn json_lines(proc: &support::Proc) -> Vec<serde_json::Value> {
    proc.log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn json_logs_parse_line_by_line_and_carry_the_request_id_as_a_key_on_both_sides() {
    let pki = support::Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = support::upstream::Upstream::start().await;
    let certs = pki.path().to_str().unwrap();
    let args = ["stub", "--certs", certs, "--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"];
    // The stub by its variable, the agent by its flag.
    let mut proc = support::Proc::spawn_with_env("stub", &args, &[("TETHER_LOG_FORMAT", "json")]);
    let listening: serde_json::Value = serde_json::from_str(&proc.wait_for("stub listening").await).unwrap();
    let stub = support::StubProc {
        quic: listening["quic"].as_str().expect("quic address as a key").to_owned(),
        url: format!("https://{}", listening["https"].as_str().expect("https address as a key")),
        proc,
    };
    let mut agent = support::spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--log-format", "json"]);
    agent.wait_for("connected to stub").await;

    let client = support::front_client(&pki, true);
    let (status, headers, _) = support::call(&client, "GET", &format!("{}/clusters/dev/echo/json", stub.url), "").await;
    assert_eq!(status, 200);
    let mut stub_proc = stub.proc;
    stub_proc.wait_for("response head").await;
    agent.wait_for("request done").await;

    let stub_lines = json_lines(&stub_proc);
    let head = stub_lines.iter().find(|l| l["message"] == "response head").unwrap();
    let id = head["request"]["id"].as_str().expect("the request span's id as a key").to_owned();
    assert!(!id.is_empty());
    assert_eq!(head["request"]["method"], "GET");
    assert_eq!(head["status"], 200, "a number stays a number: {head}");
    if let Some(echoed) = headers.get("x-request-id") {
        assert_eq!(echoed.to_str().unwrap(), id);
    }
    let agent_lines = json_lines(&agent);
    let done = agent_lines.iter().find(|l| l["message"] == "request done").unwrap();
    assert_eq!(done["request"]["id"], id.as_str(), "the agent logs the stub's request id: {done}");
    assert_eq!(done["connection"]["transport"], "quic", "the agent's connection span as a key: {done}");
    let routing = stub_lines.iter().find(|l| l["message"] == "routing").unwrap();
    assert_eq!(routing["request"]["id"], id.as_str());
    assert_eq!(routing["agent"], "agent-0", "which agent connection the stub chose: {routing}");
    // The stub's stdout carries its audit lines (JSON too, of another shape); log lines have a level.
    for line in stub_lines.iter().chain(&agent_lines).filter(|l| l.get("verb").is_none()) {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
}

#[tokio::test]
async fn a_short_udp_buffer_grant_is_warned_about_once_with_the_numbers_and_the_sysctl() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root and setpriv (to run a stub with and without CAP_NET_ADMIN)");
        return;
    }
    let pki = support::Pki::new();
    let certs = pki.path().to_str().unwrap();
    let stub_args = ["stub", "--certs", certs, "--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"];
    let warning = "the kernel granted smaller UDP socket buffers than asked for";

    // With CAP_NET_ADMIN the stub asks past the sysctl cap, and gets what it asked for.
    let mut privileged = support::Proc::spawn("stub", &stub_args);
    privileged.wait_for("stub listening").await;
    assert_eq!(privileged.count(warning), 0, "{}", privileged.log());

    // Without it, what the sysctls allow.
    let cap = |name: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).unwrap().trim().parse().unwrap()
    };
    let requested = 8 * 1024 * 1024;
    let short = cap("rmem_max") < requested || cap("wmem_max") < requested;
    let mut command = Command::new("setpriv");
    command.args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin", tether_bin()]).args(stub_args);
    let mut unprivileged = support::Proc::spawn_any("stub", &mut command);
    unprivileged.wait_for("stub listening").await;
    if short {
        assert_eq!(unprivileged.count(warning), 1, "once per process:\n{}", unprivileged.log());
        let line = unprivileged.log().lines().find(|l| l.contains(warning)).unwrap().to_owned();
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("net.core.rmem_max={requested} net.core.wmem_max={requested}")), "{line}");
        let granted = cap("rmem_max").min(requested);
        assert!(line.contains(&format!("of {requested}")) && line.contains(&granted.to_string()), "{line}");
    } else {
        assert_eq!(unprivileged.count(warning), 0, "the sysctls allow 8 MiB:\n{}", unprivileged.log());
    }
}

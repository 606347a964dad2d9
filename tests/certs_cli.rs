//! The certificate command line and the bootstrap script, as an operator runs them: files in the
//! right places with the right modes, fingerprints on stdout, refusals that name the file or
//! line, and a bootstrap that keeps what exists.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use support::tether_bin;

fn tether(args: &[&str]) -> Output {
    Command::new(tether_bin()).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn certs_commands_write_keys_privately_and_refuse_to_clobber() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert!(tether(&["certs", "init", "--dir", dir]).status.success());
    let ca = std::fs::read(tmp.path().join("ca.crt")).unwrap();
    let again = tether(&["certs", "init", "--dir", dir]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("ca.crt already exists; pass --force"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(tmp.path().join("ca.crt")).unwrap(), ca, "refusal changed nothing");
    let mode = std::fs::metadata(tmp.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    assert!(tether(&["certs", "stub", "--dir", dir, "--san", "localhost", "--san", "127.0.0.1"]).status.success());
    let out = tether(&["certs", "agent", "--dir", dir, "--cluster", "dev", "--name", "agent-0", "--register"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fp = text(&out.stdout).trim().to_owned();
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    let cert = tmp.path().join("agents/dev/agent-0.crt");
    assert_eq!(text(&tether(&["certs", "fingerprint", cert.to_str().unwrap()]).stdout).trim(), fp);
    let whitelist = std::fs::read_to_string(tmp.path().join("whitelist")).unwrap();
    assert!(whitelist.contains(&format!("dev agent-0 {fp}")), "{whitelist}");

    let bad = tether(&["certs", "agent", "--dir", dir, "--cluster", "Bad_Name", "--name", "a"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains(r#"cluster "Bad_Name" is not valid"#), "{}", text(&bad.stderr));
}

#[test]
fn the_stub_refuses_a_malformed_whitelist_naming_the_line() {
    let pki = support::Pki::new();
    std::fs::write(pki.dir.whitelist(), "# ok\ndev agent-0 sha256:1234\n").unwrap();
    let out = tether(&[
        "stub",
        "--certs",
        pki.path().to_str().unwrap(),
        "--quic-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("whitelist:2:") && err.contains("not a fingerprint"), "{err}");
}

#[test]
fn bootstrap_makes_everything_once_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bootstrap-certs.sh");
    let run = || {
        let out = Command::new("bash")
            .arg(script)
            .arg(&dir)
            .args(["dev", "prod"])
            .env("TETHER", tether_bin())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    run();
    for file in ["ca.crt", "ca.key", "stub.crt", "stub.key", "issuer.key", "issuer.pub", "agents/prod/agent-1.key"] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    let whitelist = std::fs::read_to_string(dir.join("whitelist")).unwrap();
    let entries: Vec<&str> = whitelist.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(entries.len(), 4, "{whitelist}");
    let before = support::snapshot(&dir);
    run();
    assert!(support::snapshot(&dir) == before, "a second run must change nothing");
}

#[test]
fn tokens_are_not_minted_for_empty_or_padded_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert!(tether(&["certs", "issuer", "--dir", dir]).status.success());
    for (args, problem) in [
        (vec!["--user", ""], "user name is empty"),
        (vec!["--user", "alice "], "user name \"alice \" begins or ends with white space"),
        (vec!["--user", "alice", "--group", ""], "group name is empty"),
    ] {
        let out = tether(&[&["token", "--certs", dir, "--cluster", "dev"][..], &args[..]].concat());
        assert!(!out.status.success(), "{args:?} minted a token");
        assert!(text(&out.stderr).contains(problem), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "no token printed");
    }
}

//! `--config FILE`: flags from TOML, with the command line winning over the environment and the
//! environment over the file; mistakes named by file, section and key before anything starts.

mod support;

use support::{Pki, Proc, tether_bin};

#[tokio::test]
async fn the_file_gives_flags_and_the_environment_and_command_line_win() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tether.toml");
    let certs = pki.path().to_str().unwrap();
    std::fs::write(
        &config,
        format!(
            "# a stub\n[stub]\ncerts = \"{certs}\"\nquic_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\
             audit_log = \"off\"\nmax_requests_per_user = 5\nno_watch_whitelist = true\n\n[agent]\ncluster = \"dev\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut stub = Proc::spawn_with_env(
        "stub",
        &["--config", config, "stub", "--quic-listen", "127.0.0.3:0"],
        &[("TETHER_HTTPS_LISTEN", "127.0.0.2:0")],
    );
    let line = stub.wait_for("stub listening").await;
    assert!(line.contains("quic=127.0.0.3:"), "the command line wins over the file: {line}");
    assert!(line.contains("https=127.0.0.2:"), "the environment wins over the file: {line}");
    assert_eq!(stub.count("whitelist loaded"), 1, "certs came from the file");
}

#[tokio::test]
async fn mistakes_in_the_file_are_named_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[stub]\nquic_listn = \"127.0.0.1:0\"\n", "[stub] unknown key `quic_listn`"),
        ("[stubb]\ncerts = \"x\"\n", "unknown section [stubb]"),
        ("certs = \"x\"\n", "key `certs` must be inside a section"),
        ("[stub]\nno_watch_whitelist = \"yes\"\n", "`no_watch_whitelist` must be true or false"),
        ("[stub]\ncerts = \n", "not valid TOML"),
        // A typo in another command's section is found too.
        ("[agent]\nclustr = \"dev\"\n", "[agent] unknown key `clustr`"),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(tether_bin())
            .args(["--config", path.to_str().unwrap(), "stub"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(&format!("bad-{i}.toml")) && stderr.contains(expected), "{text:?}: {stderr}");
    }
}

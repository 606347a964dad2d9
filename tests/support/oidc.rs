//! A real OpenID Connect provider for tests that need the hub's identity provider.
//!
//! [`OidcProvider`] runs `scripts/oidc-provider/provider.mjs` (the npm package `oidc-provider`,
//! installed outside the repo by `scripts/oidc-provider.sh install`, which `scripts/test.sh`
//! runs) on `127.0.0.1` with a kernel-chosen port, serving HTTPS with a certificate from the
//! test's [`Pki`]. It offers discovery, the device authorization grant and refresh tokens to one
//! public client, `tether`; its users are given by the test. kube-apiserver accepts its id_tokens
//! with [`OidcProvider::apiserver_flags`] (username = the `email` claim, groups = the `groups`
//! claim; note that kube-apiserver v1.20 first fetches the provider's discovery about 10 s after
//! it starts, and until then answers "authenticator not initialized").
//!
//! The user's side of a login (a browser: verification URL, confirm, sign in, consent) is
//! `tests/support/oidc_browser.py`, run by [`OidcProvider::complete_device_login`]; the same
//! script has `authorize` and `poll` modes for a test that plays the CLI's side by hand.
//! Every wait is bounded by [`PATIENCE`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tether::identity::certs::Validity;

use super::{PATIENCE, Pki, Proc};

/// The OAuth client the provider knows: public (no secret), device_code and refresh_token grants.
pub const CLIENT_ID: &str = "tether";

/// The line `provider.mjs` prints once it listens, followed by the issuer URL.
const LISTENING: &str = "oidc provider listening issuer=";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/support/oidc_browser.py`: the scripted browser (`login`) and the CLI's side of the
/// device flow (`authorize`, `poll`); see its docstring for the command lines.
pub fn browser_script() -> PathBuf {
    manifest_dir().join("tests/support/oidc_browser.py")
}

/// The directory `scripts/oidc-provider.sh install` filled (provider.mjs and its node_modules);
/// panics, saying how to install it, if there is none.
fn installed_dir() -> PathBuf {
    let output = Command::new("bash")
        .arg(manifest_dir().join("scripts/oidc-provider.sh"))
        .arg("dir")
        .stdin(Stdio::null())
        .output()
        .expect("run bash scripts/oidc-provider.sh dir");
    assert!(
        output.status.success(),
        "the OIDC provider for the tests is not installed: run `scripts/oidc-provider.sh install` \
         (scripts/test.sh does); `scripts/oidc-provider.sh dir` said:\n{}",
        super::kube::text(&output)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A running OpenID Connect provider (killed, by its PID, when dropped).
pub struct OidcProvider {
    /// The `node provider.mjs` process; its log holds one line per HTTP request.
    pub proc: Proc,
    /// `https://127.0.0.1:PORT`, exactly as discovery and the id_tokens' `iss` say.
    pub issuer: String,
    /// The CA that signed the provider's serving certificate: the test [`Pki`]'s `ca.crt` (so the
    /// `Pki` must outlive the provider).
    pub ca: PathBuf,
    /// The provider's serving certificate and key.
    _tls: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider with `users`, comma-separated `user:password:email:group1|group2`
    /// (e.g. `alice:secret:alice@example.test:people`), serving a certificate for 127.0.0.1
    /// signed by `pki`'s CA, and waits until it listens.
    pub async fn start(pki: &Pki, users: &str) -> OidcProvider {
        let tls = tempfile::Builder::new().prefix("tether-oidc-tls-").tempdir().unwrap();
        let (cert, key) = (tls.path().join("provider.crt"), tls.path().join("provider.key"));
        pki.signer().issue_stub(&["127.0.0.1".into()], Validity::days(1)).unwrap().save(&cert, &key).unwrap();
        let dir = installed_dir();
        let mut proc = Proc::spawn_any(
            "oidc provider",
            Command::new("node")
                .arg("provider.mjs")
                .current_dir(&dir)
                .env("OIDC_TLS_CERT", &cert)
                .env("OIDC_TLS_KEY", &key)
                .env("OIDC_PORT", "0")
                .env("OIDC_USERS", users),
        );
        let line = proc.wait_for(LISTENING).await;
        let issuer = line[line.find(LISTENING).unwrap() + LISTENING.len()..].trim().to_owned();
        assert!(issuer.starts_with("https://127.0.0.1:"), "unexpected issuer in {line:?}");
        OidcProvider { proc, issuer, ca: pki.dir.ca_cert(), _tls: tls }
    }

    /// kube-apiserver's flags that make it accept this provider's id_tokens for client
    /// [`CLIENT_ID`]: username from the `email` claim (no prefix), groups from `groups`.
    pub fn apiserver_flags(&self) -> Vec<String> {
        vec![
            format!("--oidc-issuer-url={}", self.issuer),
            format!("--oidc-client-id={CLIENT_ID}"),
            format!("--oidc-ca-file={}", self.ca.display()),
            "--oidc-username-claim=email".to_owned(),
            "--oidc-groups-claim=groups".to_owned(),
        ]
    }

    /// Does what the user does in a browser for a pending device authorization: opens
    /// `verification_uri_complete` (the URL with the user code), confirms the code, signs in as
    /// `user` with `password` and consents. Panics, with the script's output, unless the provider
    /// ends with its "Sign-in Success" page within [`PATIENCE`]. The device's next poll of the
    /// token endpoint then gets the tokens.
    pub async fn complete_device_login(&self, verification_uri_complete: &str, user: &str, password: &str) {
        let ca = self.ca.to_str().unwrap();
        let args = ["login", "--ca", ca, "--user", user, "--password", password, verification_uri_complete];
        let output = run_browser(&args).await;
        assert!(
            output.status.success(),
            "signing in as {user} at {verification_uri_complete} failed ({}):\n{}",
            output.status,
            super::kube::text(&output)
        );
    }
}

/// Runs `python3 tests/support/oidc_browser.py ARGS` to completion within [`PATIENCE`] (killed,
/// by its PID, if it takes longer) and returns its output; panics only if it cannot run or
/// times out.
pub async fn run_browser(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(browser_script())
        .args(args)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", browser_script().display()));
    match tokio::time::timeout(PATIENCE, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("oidc_browser.py {}: {e}", args[0])),
        Err(_) => panic!("oidc_browser.py {} did not finish within {PATIENCE:?}", args[0]),
    }
}

//! Shared test support: certificate directories minted with rcgen, the real `tether` binary run
//! as child processes on port 0, and an HTTPS client for the stub's front door. Nothing here
//! sleeps to synchronise: processes are awaited through the lines they log.
#![allow(dead_code)]

pub mod admin;
pub mod egress;
pub mod host;
pub mod hub;
pub mod kube;
pub mod lb;
pub mod link;
pub mod load;
pub mod oidc;
pub mod upstream;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether::identity::certs::{self, Minted, Signer, Validity};
use tether::identity::files::CertDir;
use tether::identity::fingerprint::Fingerprint;
use tether::identity::token::{Claims, TokenIssuer};
use tether::identity::whitelist::{self, Entry};

/// How long a test waits for a process to reach a state before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Every file under `dir` (by its path relative to `dir`) with its bytes, sorted: compared before
/// and after a command, it shows that the command changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

pub fn tether_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tether")
}

/// A certificate directory of its own (CA, stub certificate for 127.0.0.1/localhost, whitelist).
pub struct Pki {
    _tmp: tempfile::TempDir,
    pub dir: CertDir,
    ca: Minted,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_stub_names(&[])
    }

    /// Like [`Pki::new`], with more names (DNS names or IPs) on the stub's certificate.
    pub fn with_stub_names(extra: &[&str]) -> Pki {
        tether::identity::tls::install_default_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        let ca = certs::new_ca("test CA", Validity::days(1)).unwrap();
        ca.save(&dir.ca_cert(), &dir.ca_key()).unwrap();
        let stub = Signer::from_pem(&ca.cert_pem, &ca.key_pem)
            .unwrap()
            .issue_stub(
                &["localhost", "127.0.0.1"].iter().chain(extra).map(|n| n.to_string()).collect::<Vec<_>>(),
                Validity::days(1),
            )
            .unwrap();
        stub.save(&dir.stub_cert(), &dir.stub_key()).unwrap();
        std::fs::write(dir.whitelist(), "# test whitelist\n").unwrap();
        certs::issuer_in_dir(&dir, false).unwrap();
        Pki { _tmp: tmp, dir, ca }
    }

    /// A token for `user` in `groups`, allowed to reach `clusters`, valid for an hour.
    pub fn token(&self, user: &str, groups: &[&str], clusters: &[&str]) -> String {
        let issuer = TokenIssuer::load(&self.dir.issuer_key()).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let clusters: Vec<String> = clusters.iter().map(|c| c.to_string()).collect();
        issuer.sign(&Claims::new(user, &groups, &clusters, Duration::from_secs(3600)))
    }

    pub fn signer(&self) -> Signer {
        Signer::from_pem(&self.ca.cert_pem, &self.ca.key_pem).unwrap()
    }

    /// An agent certificate signed by this CA, written to `agents/<cluster>/<name>.*`, registered.
    pub fn agent(&self, cluster: &str, name: &str) -> Fingerprint {
        let minted = self.signer().issue_agent(cluster, name, Validity::days(1)).unwrap();
        self.install_agent(cluster, name, &minted, Some(cluster))
    }

    /// Writes `minted` as the certificate of `cluster/name`, and registers it for
    /// `register_as` (a cluster), if given.
    pub fn install_agent(&self, cluster: &str, name: &str, minted: &Minted, register_as: Option<&str>) -> Fingerprint {
        minted.save(&self.dir.agent_cert(cluster, name), &self.dir.agent_key(cluster, name)).unwrap();
        if let Some(registered_cluster) = register_as {
            let entry =
                Entry { cluster: registered_cluster.into(), name: name.into(), fingerprint: minted.fingerprint };
            whitelist::register(&self.dir.whitelist(), &entry).unwrap();
        }
        minted.fingerprint
    }

    pub fn path(&self) -> &Path {
        self.dir.root()
    }
}

/// A child process whose output lines (stdout and stderr) are collected, killed (by its PID)
/// when dropped.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    seen: tokio::sync::watch::Receiver<usize>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_with_env(name, args, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_command(name, Command::new(tether_bin()).args(args).envs(env.iter().copied()))
    }

    /// The tether binary with at most `max_files` open files (soft and hard limit), set by a
    /// shell that then execs it: the PID is tether's own.
    pub fn spawn_with_file_limit(name: &str, args: &[&str], max_files: u32) -> Proc {
        let script = format!("ulimit -n {max_files} && exec \"$0\" \"$@\"");
        Proc::spawn_command(name, Command::new("sh").args(["-c", &script, tether_bin()]).args(args))
    }

    /// The tether binary run inside network namespace `netns` (`ip netns exec`, which execs it:
    /// the PID is tether's own).
    pub fn spawn_in_netns(name: &str, netns: &str, args: &[&str]) -> Proc {
        Proc::spawn_command(name, Command::new("ip").args(["netns", "exec", netns, tether_bin()]).args(args))
    }

    /// Any program (not tether), its output collected the same way.
    pub fn spawn_any(name: &str, command: &mut Command) -> Proc {
        Proc::spawn_command(name, command)
    }

    fn spawn_command(name: &str, command: &mut Command) -> Proc {
        // A proxy of the machine running the tests (CI's, say) must not carry the agents' TCP
        // dials to a stub on loopback; tests of the proxy set these on the command themselves.
        for variable in ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"] {
            if !command.get_envs().any(|(key, _)| key == variable) {
                command.env_remove(variable);
            }
        }
        let mut child = command
            .env("TETHER_LOG", std::env::var("TETHER_TEST_LOG").unwrap_or_else(|_| "info,tether=debug".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tether");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = tokio::sync::watch::channel(0);
        let tx = Arc::new(tx);
        // stdout (audit lines) and stderr (logs) land in one list, in arrival order.
        let outputs: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for output in outputs {
            let (sink, label, tx) = (lines.clone(), name.to_owned(), tx.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(output).lines().map_while(Result::ok) {
                    if std::env::var_os("TETHER_TEST_ECHO").is_some() {
                        eprintln!("[{label}] {line}");
                    }
                    let mut all = sink.lock().unwrap();
                    all.push(line);
                    let _ = tx.send(all.len());
                }
            });
        }
        Proc { child, lines, seen, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a logged line contains `needle`; returns that line.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            match tokio::time::timeout_at(deadline, self.seen.changed()).await {
                Ok(Ok(())) => {}
                // Both output pipes closed: the process is gone and no line will come.
                Ok(Err(_)) if self.lines.lock().unwrap().iter().all(|l| !l.contains(needle)) => {
                    panic!("{} exited without a line containing {needle:?}; log:\n{}", self.name, self.log())
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    panic!("{}: no line containing {needle:?} within {PATIENCE:?}; log:\n{}", self.name, self.log())
                }
            }
        }
    }

    /// Waits until at least `n` logged lines contain `needle`.
    pub async fn wait_for_count(&mut self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.count(needle) < n {
            match tokio::time::timeout_at(deadline, self.seen.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) if self.count(needle) < n => {
                    panic!("{} exited with fewer than {n} lines containing {needle:?}; log:\n{}", self.name, self.log())
                }
                Ok(Err(_)) => {}
                Err(_) => panic!(
                    "{}: fewer than {n} lines containing {needle:?} within {PATIENCE:?}; log:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// Waits (bounded) until the process has exited, and returns its status. Its output pipes
    /// close when it exits, which ends the reader threads and closes the line channel.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_closed)) => return self.child.wait().unwrap(),
                Err(_) => panic!("{} did not exit within {PATIENCE:?}; log:\n{}", self.name, self.log()),
            }
        }
    }

    /// Sends a signal to this process (and only this one, by its PID).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Number of logged lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Peak resident memory of the process (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kb * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} missing in {line:?}")) + key.len();
    line[start..].split_whitespace().next().unwrap()
}

/// A running stub.
pub struct StubProc {
    pub proc: Proc,
    /// `127.0.0.1:PORT` of the QUIC listener.
    pub quic: String,
    /// `https://127.0.0.1:PORT` of the front door.
    pub url: String,
}

impl StubProc {
    pub async fn start(pki: &Pki) -> StubProc {
        StubProc::start_with(pki, &[]).await
    }

    /// A stub with extra arguments (e.g. `--audit-log FILE`).
    pub async fn start_with(pki: &Pki, extra: &[&str]) -> StubProc {
        StubProc::start_at(pki, "127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    /// A stub inside `link`'s namespace: agents reach it over the lossy wire, clients over the
    /// clean path.
    pub async fn start_behind(pki: &Pki, link: &link::Link, extra: &[&str]) -> StubProc {
        let certs = pki.path().to_str().unwrap();
        let mut args = vec!["stub", "--certs", certs, "--quic-listen", "0.0.0.0:0", "--https-listen", "0.0.0.0:0"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_in_netns("stub", &link.netns, &args);
        let line = proc.wait_for("stub listening").await;
        let port = |key| field(&line, key).rsplit(':').next().unwrap().to_owned();
        let quic = format!("{}:{}", link.lossy_addr(), port("quic="));
        let url = format!("https://{}:{}", link.clean_addr(), port("https="));
        StubProc { proc, quic, url }
    }

    /// A stub on these addresses (to restart one where the previous one was).
    pub async fn start_at(pki: &Pki, quic: &str, https: &str, extra: &[&str]) -> StubProc {
        let certs = pki.path().to_str().unwrap();
        let mut args = vec!["stub", "--certs", certs, "--quic-listen", quic, "--https-listen", https];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn("stub", &args);
        let line = proc.wait_for("stub listening").await;
        let quic = field(&line, "quic=").to_owned();
        let url = format!("https://{}", field(&line, "https="));
        StubProc { proc, quic, url }
    }
}

/// Starts an agent of `cluster/name` (certificate from `pki`) forwarding to `upstream`, with
/// extra arguments; does not wait for anything.
pub fn spawn_agent(pki: &Pki, stub: &StubProc, cluster: &str, name: &str, upstream: &str, extra: &[&str]) -> Proc {
    let mut source = vec!["--upstream", upstream];
    source.extend_from_slice(extra);
    spawn_agent_with(pki, stub, cluster, name, &source)
}

/// Starts an agent of `cluster/name` whose upstream is given by `source` arguments (e.g.
/// `--kubeconfig FILE`).
pub fn spawn_agent_with(pki: &Pki, stub: &StubProc, cluster: &str, name: &str, source: &[&str]) -> Proc {
    let stub_addr = format!("localhost:{}", stub.quic.rsplit(':').next().unwrap());
    let mut args = vec!["agent", "--certs", pki.path().to_str().unwrap(), "--cluster", cluster, "--name", name];
    args.extend_from_slice(&["--stub", &stub_addr]);
    args.extend_from_slice(source);
    Proc::spawn(&format!("agent {cluster}/{name}"), &args)
}

/// A QUIC connection to the stub with the certificate of `cluster/name`, and nothing more:
/// the test speaks the protocol itself (a hostile agent, or one of another build).
pub async fn raw_agent_connection(pki: &Pki, stub: &StubProc, cluster: &str, name: &str) -> quinn::Connection {
    use tether::identity::files;
    let ca = files::load_certs(&pki.dir.ca_cert()).unwrap();
    let chain = files::load_certs(&pki.dir.agent_cert(cluster, name)).unwrap();
    let key = files::load_key(&pki.dir.agent_key(cluster, name)).unwrap();
    let tls = tether::identity::tls::agent_dialer(&ca, chain, key).unwrap();
    let config = tether::transport::quic::client_config(tls, &tether::transport::quic::Tuning::default()).unwrap();
    let endpoint = tether::transport::quic::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.connect_with(config, stub.quic.parse().unwrap(), "localhost").unwrap().await.unwrap()
}

/// Starts an agent and waits until the stub has welcomed it.
pub async fn start_agent(pki: &Pki, stub: &StubProc, cluster: &str, name: &str, upstream: &str) -> Proc {
    let mut agent = spawn_agent(pki, stub, cluster, name, upstream, &[]);
    agent.wait_for("connected to stub").await;
    agent
}

/// An HTTPS client of the front door that sends a bearer token with every request that has no
/// `Authorization` of its own.
#[derive(Clone)]
pub struct FrontClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, tether::bridge::Body>,
    token: Option<String>,
}

pub type ResponseFuture = hyper_util::client::legacy::ResponseFuture;

impl FrontClient {
    pub fn request(&self, mut request: http::Request<tether::bridge::Body>) -> ResponseFuture {
        if let Some(token) = &self.token
            && !request.headers().contains_key(http::header::AUTHORIZATION)
        {
            request.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        }
        self.client.request(request)
    }

    pub fn get(&self, uri: http::Uri) -> ResponseFuture {
        self.request(http::Request::get(uri).body(tether::bridge::empty()).unwrap())
    }

    /// The same client with another token (or none).
    pub fn with_token(&self, token: Option<String>) -> FrontClient {
        FrontClient { client: self.client.clone(), token }
    }
}

/// A front-door client that trusts `pki`'s CA, speaks HTTP/2 (`h2`) or HTTP/1.1, and carries a
/// token of user `tester` for every cluster the tests use.
pub fn front_client(pki: &Pki, h2: bool) -> FrontClient {
    let token = pki.token("tester", &["testers"], &["dev", "prod", "broken", "idle", "untrusting", "nowhere"]);
    front_client_with(pki, h2, None, Some(token))
}

/// A front-door client with an optional client certificate (`cert`, `key` PEM files).
pub fn front_client_with(pki: &Pki, h2: bool, identity: Option<(&Path, &Path)>, token: Option<String>) -> FrontClient {
    let roots =
        tether::identity::tls::roots(&tether::identity::files::load_certs(&pki.dir.ca_cert()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(tether::identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let tls = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                tether::identity::files::load_certs(cert).unwrap(),
                tether::identity::files::load_key(key).unwrap(),
            )
            .unwrap(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
    let connector = if h2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(h2);
    FrontClient { client: client.build(connector), token }
}

/// A raw TLS connection to the stub's front door, speaking HTTP/1.1 by ALPN, for tests that
/// write the bytes themselves (upgrades, slow or flooding clients).
pub async fn front_door_tls(pki: &Pki, stub: &StubProc) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    front_door_tls_from(pki, stub, b"http/1.1", "127.0.0.1").await
}

/// A TCP connection to the stub's front door from `source` (any 127.x.y.z address), not yet TLS.
pub async fn front_door_tcp(stub: &StubProc, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(stub.url.trim_start_matches("https://").parse().unwrap()).await.unwrap()
}

/// Like [`front_door_tls`], with another ALPN protocol (`h2`) and from `source`.
pub async fn front_door_tls_from(
    pki: &Pki,
    stub: &StubProc,
    alpn: &[u8],
    source: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let roots =
        tether::identity::tls::roots(&tether::identity::files::load_certs(&pki.dir.ca_cert()).unwrap()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(tether::identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = front_door_tcp(stub, source).await;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap()
}

/// Sends a request with a body and collects the whole response.
pub async fn call(
    client: &FrontClient,
    method: &str,
    url: &str,
    body: impl Into<bytes::Bytes>,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    let request = http::Request::builder().method(method).uri(url).body(tether::bridge::full(body.into())).unwrap();
    let response = client.request(request).await.expect("front door answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("whole body").to_bytes();
    (parts.status.as_u16(), parts.headers, bytes)
}

/// A temporary path for files a test writes.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tether-test-{}-{name}", std::process::id()))
}

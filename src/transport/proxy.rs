//! Egress through an HTTP proxy: the TCP fallback's dial goes to the proxy and asks it for a
//! tunnel with `CONNECT HOST:PORT` (RFC 9110, section 9.3.6); TLS then runs inside that tunnel
//! as on a direct connection, so the proxy sees only the stub's name and ciphertext. QUIC cannot
//! cross such a proxy.
//!
//! Configured by `--proxy URL`, else `HTTPS_PROXY` (or `https_proxy`), as other tools read
//! them: `http://[USER:PASSWORD@]HOST[:PORT]`, the port 3128 unless given. Credentials are sent as
//! `Proxy-Authorization: Basic` and never logged ([`Proxy`]'s `Display` shows `***`). `NO_PROXY`
//! (or `no_proxy`, or `--no-proxy`) lists stubs to reach directly: `*`, host names (which also
//! match their subdomains; a leading dot is the same), IP addresses and CIDR ranges, each
//! optionally with `:PORT`. A stub on this machine (`localhost`, a loopback address) is always
//! dialled directly ([`is_loopback`]), as Go's and most tools' proxy rules have it.
//!
//! The pure parts (the URL, the `NO_PROXY` list, the proxy's answer) are property-tested.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head a proxy may send before the tunnel starts.
const MAX_ANSWER_HEAD: usize = 16 * 1024;

/// Port of a proxy URL without one (squid's, the usual).
const DEFAULT_PORT: u16 = 3128;

/// An HTTP proxy to dial the TCP fallback through.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Basic base64(user:password)`, if the URL has credentials.
    authorization: Option<String>,
    /// The user name, for the redacted form.
    user: Option<String>,
}

/// Why a proxy setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} {shown:?} is not a usable proxy: {problem}")]
pub struct ProxyError {
    /// `--proxy` or the variable it came from.
    pub source_name: String,
    /// The value, credentials hidden.
    pub shown: String,
    pub problem: String,
}

impl Proxy {
    /// Parses `http://[USER:PASSWORD@]HOST[:PORT][/]`; `source_name` names where it came from.
    pub fn parse(url: &str, source_name: &str) -> Result<Proxy, ProxyError> {
        let fail = |problem: &str| ProxyError {
            source_name: source_name.to_owned(),
            shown: redact(url),
            problem: problem.to_owned(),
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(fail(
                    "a proxy reached over TLS (https://) is not supported; give its plain http:// address",
                ));
            }
            Some((scheme, _)) => return Err(fail(&format!("the scheme {scheme:?} is not http"))),
            // As curl does: a bare HOST:PORT is an http proxy.
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(fail("a proxy URL has no path"));
        }
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (host, port) = split_host_port(address).ok_or_else(|| fail("no host"))?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| fail("the port is not 1-65535"))?,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("the host is empty or holds white space"));
        }
        let (authorization, user) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
                let user = percent_decode(user).ok_or_else(|| fail("bad %-escape in the user name"))?;
                let password = percent_decode(password).ok_or_else(|| fail("bad %-escape in the password"))?;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                (Some(format!("Basic {token}")), Some(user))
            }
        };
        Ok(Proxy { host: host.to_owned(), port, authorization, user })
    }

    /// `HOST:PORT` of the proxy, to dial.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Connects to the proxy and asks it for a tunnel to `target` (`HOST:PORT`); returns the
    /// stream once the proxy has said yes, positioned at the first byte from the target.
    pub async fn connect(&self, target: &str, patience: Duration) -> Result<TcpStream, String> {
        let proxy = self.to_string();
        let mut tcp = tokio::time::timeout(patience, TcpStream::connect(self.address()))
            .await
            .map_err(|_| format!("proxy {proxy}: no TCP connection within {patience:?}"))?
            .map_err(|e| format!("cannot reach proxy {proxy}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(self.connect_request(target).as_bytes())
            .await
            .map_err(|e| format!("proxy {proxy} closed the connection before the CONNECT was sent: {e}"))?;
        let mut head = Vec::with_capacity(512);
        let answer = tokio::time::timeout(patience, async {
            // Byte by byte up to the blank line: whatever follows belongs to TLS.
            let mut byte = [0u8; 1];
            loop {
                match tcp.read(&mut byte).await {
                    Ok(0) => return Err(format!("proxy {proxy} closed the connection without answering the CONNECT")),
                    Ok(_) => head.push(byte[0]),
                    Err(e) => return Err(format!("proxy {proxy} broke off its answer to the CONNECT: {e}")),
                }
                match parse_answer(&head) {
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) => {}
                    Err(problem) => return Err(format!("proxy {proxy} answered the CONNECT with {problem}")),
                }
            }
        })
        .await
        .map_err(|_| format!("proxy {proxy}: no answer to the CONNECT within {patience:?}"))??;
        match answer.status {
            200..=299 => Ok(tcp),
            // 407 is the standard answer; some proxies (tinyproxy) say 401.
            401 | 407 => Err(format!(
                "proxy {proxy} wants credentials for CONNECT {target} ({} {}): give them in the proxy URL, http://USER:PASSWORD@HOST:PORT",
                answer.status, answer.reason
            )),
            status => Err(format!("proxy {proxy} refused CONNECT {target}: {status} {}", answer.reason)),
        }
    }

    fn connect_request(&self, target: &str) -> String {
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n", crate_build());
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

fn crate_build() -> String {
    format!("tether/{}", env!("CARGO_PKG_VERSION"))
}

/// The URL as logs may show it: `http://USER:***@HOST:PORT`.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "http://{user}:***@{}", self.address()),
            None => write!(f, "http://{}", self.address()),
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// `url` with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let shown = match rest.rsplit_once('@') {
        Some((credentials, address)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            format!("{user}:***@{address}")
        }
        None => rest.to_owned(),
    };
    if scheme.is_empty() { shown } else { format!("{scheme}://{shown}") }
}

/// HOST and optional PORT of `HOST[:PORT]` or `[V6][:PORT]`.
fn split_host_port(address: &str) -> Option<(&str, Option<&str>)> {
    if let Some(inner) = address.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            port => Some((host, Some(port.strip_prefix(':')?))),
        };
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => Some((address, None)), // a bare IPv6 address
        None => Some((address, None)),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The status of a proxy's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    /// Bytes of the head, the blank line included.
    pub head_len: usize,
}

/// The proxy's answer, once `head` holds all of it (`Ok(None)`: read more). Refuses what is
/// not an HTTP/1.x status line, or a head longer than [`MAX_ANSWER_HEAD`].
pub fn parse_answer(head: &[u8]) -> Result<Option<Answer>, String> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        if head.len() > MAX_ANSWER_HEAD {
            return Err(format!("an answer head longer than {MAX_ANSWER_HEAD} bytes"));
        }
        if head.len() >= 5 && !head.starts_with(b"HTTP/") {
            return Err("something that is not HTTP".to_owned());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&head[..end]).map_err(|_| "an answer that is not text".to_owned())?;
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("the status line {status_line:?}, not HTTP/1.x"));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("the status line {status_line:?}, without a status code"))?;
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    Ok(Some(Answer { status, reason, head_len: end }))
}

/// The `NO_PROXY` list: targets dialled directly although a proxy is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    /// A name and its subdomains (lowercase, no leading dot).
    Domain {
        name: String,
        port: Option<u16>,
    },
    Ip {
        addr: IpAddr,
        port: Option<u16>,
    },
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
}

impl NoProxy {
    /// Parses a comma-separated list (white space around entries is ignored; empty entries
    /// and ones that cannot be read are skipped, as other tools skip them).
    pub fn parse(list: &str) -> NoProxy {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(|entry| {
                if entry == "*" {
                    return Some(NoProxyEntry::All);
                }
                if let Some((network, prefix)) = entry.split_once('/') {
                    let network: IpAddr = network.parse().ok()?;
                    let prefix: u8 = prefix.parse().ok()?;
                    let max = if network.is_ipv4() { 32 } else { 128 };
                    return (prefix <= max).then_some(NoProxyEntry::Cidr { network, prefix });
                }
                let (host, port) = split_host_port(entry)?;
                let port = match port {
                    Some(p) => Some(p.parse().ok()?),
                    None => None,
                };
                if let Ok(addr) = host.parse::<IpAddr>() {
                    return Some(NoProxyEntry::Ip { addr, port });
                }
                let name = host.trim_start_matches('.').trim_start_matches("*.").to_ascii_lowercase();
                (!name.is_empty()).then_some(NoProxyEntry::Domain { name, port })
            })
            .collect();
        NoProxy { entries }
    }

    /// Whether `target` (`HOST:PORT`) is to be dialled directly.
    pub fn bypasses(&self, target: &str) -> bool {
        let Some((host, port)) = split_host_port(target) else { return false };
        let port: Option<u16> = port.and_then(|p| p.parse().ok());
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let ip = host.parse::<IpAddr>().ok();
        let port_ok = |wanted: &Option<u16>| wanted.is_none() || *wanted == port;
        self.entries.iter().any(|entry| match entry {
            NoProxyEntry::All => true,
            NoProxyEntry::Domain { name, port } => {
                port_ok(port) && (host == name || host.ends_with(&format!(".{name}")))
            }
            NoProxyEntry::Ip { addr, port } => port_ok(port) && ip == Some(*addr),
            NoProxyEntry::Cidr { network, prefix } => ip.is_some_and(|ip| in_network(ip, *network, *prefix)),
        })
    }
}

/// Whether `target` (`HOST:PORT`) is this machine: `localhost` (or a name under it) or a
/// loopback address.
pub fn is_loopback(target: &str) -> bool {
    let Some((host, _)) = split_host_port(target) else { return false };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn urls_give_host_port_and_hidden_credentials() {
        let proxy = Proxy::parse("http://alice:s%40cret@proxy.corp:8080/", "HTTPS_PROXY").unwrap();
        assert_eq!(proxy.address(), "proxy.corp:8080");
        assert_eq!(proxy.to_string(), "http://alice:***@proxy.corp:8080");
        assert_eq!(format!("{proxy:?}"), "Proxy(http://alice:***@proxy.corp:8080)");
        let request = proxy.connect_request("hub:7443");
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:s@cret");
        assert!(request.contains(&format!("Proxy-Authorization: Basic {expected}\r\n")), "{request}");
        assert!(request.starts_with("CONNECT hub:7443 HTTP/1.1\r\nHost: hub:7443\r\n"), "{request}");

        assert_eq!(Proxy::parse("proxy:3129", "--proxy").unwrap().address(), "proxy:3129");
        assert_eq!(Proxy::parse("http://proxy", "--proxy").unwrap().address(), "proxy:3128");
        assert_eq!(Proxy::parse("http://[fd00::1]:8080", "--proxy").unwrap().address(), "[fd00::1]:8080");
        assert!(Proxy::parse("http://proxy", "--proxy").unwrap().connect_request("h:1").find("Proxy-Auth").is_none());
    }

    #[test]
    fn unusable_urls_are_refused_naming_the_source_without_the_password() {
        for (url, problem) in [
            ("https://alice:pw@proxy:443", "https://"),
            ("socks5://proxy:1080", "not http"),
            ("http://proxy:0", "1-65535"),
            ("http://proxy:x", "1-65535"),
            ("http://proxy:8080/path", "no path"),
            ("http://:8080", "empty"),
        ] {
            let e = Proxy::parse(url, "HTTPS_PROXY").unwrap_err().to_string();
            assert!(e.contains(problem) && e.starts_with("HTTPS_PROXY"), "{url}: {e}");
            assert!(!e.contains("pw"), "the password leaked: {e}");
        }
    }

    #[test]
    fn answers_are_read_to_the_blank_line() {
        assert_eq!(parse_answer(b"HTTP/1.1 200 Conn").unwrap(), None);
        let ok = parse_answer(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n").unwrap().unwrap();
        assert_eq!((ok.status, ok.reason.as_str(), ok.head_len), (200, "Connection established", 47));
        let refused = parse_answer(b"HTTP/1.0 403 Access violation\r\n\r\n").unwrap().unwrap();
        assert_eq!((refused.status, refused.reason.as_str()), (403, "Access violation"));
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("not HTTP"));
        assert!(parse_answer(b"HTTP/1.1 2000 x\r\n\r\n").unwrap_err().contains("status code"));
        assert!(parse_answer(&[b'H'; MAX_ANSWER_HEAD + 1]).is_err());
    }

    #[test]
    fn no_proxy_entries_match_as_other_tools_read_them() {
        let list =
            NoProxy::parse(" .corp.example, localhost ,10.0.0.0/8, 192.168.1.5, hub.internal:7443, [fd00::1], bad/99");
        for direct in [
            "x.corp.example:7443",
            "corp.example:1",
            "LOCALHOST:7443",
            "10.9.8.7:7443",
            "192.168.1.5:1",
            "hub.internal:7443",
            "[fd00::1]:7443",
        ] {
            assert!(list.bypasses(direct), "{direct}");
        }
        for proxied in ["xcorp.example:7443", "hub.internal:7444", "11.0.0.1:7443", "192.168.1.6:1", "example:1"] {
            assert!(!list.bypasses(proxied), "{proxied}");
        }
        assert!(NoProxy::parse("*").bypasses("anything:1"));
        for here in ["localhost:7443", "LOCALHOST.:1", "a.localhost:1", "127.0.0.1:7443", "127.3.2.1:1", "[::1]:7443"] {
            assert!(is_loopback(here), "{here}");
        }
        for away in ["hub:7443", "localhost.example:1", "10.0.0.1:1", "[fd00::1]:1"] {
            assert!(!is_loopback(away), "{away}");
        }
        assert!(!NoProxy::parse("").bypasses("anything:1"));
    }

    proptest! {
        /// Any input: an answer, "read more" or a refusal, never a panic; a complete answer's
        /// head ends where its blank line does.
        #[test]
        fn any_proxy_answer_is_parsed_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(answer)) = parse_answer(&bytes) {
                prop_assert!(bytes[..answer.head_len].ends_with(b"\r\n\r\n"));
                prop_assert!((100..=599).contains(&answer.status));
            }
        }

        /// A status line with any code and reason reads back as written.
        #[test]
        fn status_lines_round_trip(status in 100u16..600, reason in "[A-Za-z ]{0,30}", minor in 0u8..2) {
            let head = format!("HTTP/1.{minor} {status} {reason}\r\nX: y\r\n\r\n");
            let answer = parse_answer(head.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(answer.status, status);
            prop_assert_eq!(answer.reason, reason.trim());
            prop_assert_eq!(answer.head_len, head.len());
        }

        /// Any URL: parsed or refused, never a panic, and a refusal never shows the password.
        #[test]
        fn any_proxy_url_is_parsed_or_refused_without_leaking(user in "[a-z]{1,8}", password in "[A-Za-z0-9]{6,12}", tail in ".{0,30}") {
            let url = format!("http://{user}:{password}@{tail}");
            match Proxy::parse(&url, "--proxy") {
                Ok(proxy) => prop_assert!(!proxy.to_string().contains(&password)),
                Err(e) => prop_assert!(!e.to_string().contains(&password), "{}", e),
            }
        }

        /// A name always bypasses under its own entry, and its subdomains do too.
        #[test]
        fn a_domain_entry_covers_its_subdomains(name in "[a-z]{1,10}\\.[a-z]{2,5}", sub in "[a-z]{1,8}", port in 1u16..) {
            let list = NoProxy::parse(&name);
            let exact = format!("{name}:{port}");
            prop_assert!(list.bypasses(&exact));
            let subdomain = format!("{sub}.{name}:{port}");
            prop_assert!(list.bypasses(&subdomain));
            let lookalike = format!("{sub}{name}:{port}");
            prop_assert!(!list.bypasses(&lookalike));
        }
    }
}

//! The admin listener of a stub or agent, as a test reads it: plain HTTP GETs, the address from
//! the "admin listening" log line, and samples of the Prometheus text.

use std::time::Duration;

/// GET `path` from a plain-HTTP admin listener: (status, body).
pub async fn admin_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `check` holds (bounded): counters are updated as responses end, a moment after
/// the client has seen the last byte.
pub async fn scrape_until(addr: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + super::PATIENCE;
    loop {
        let (status, body) = admin_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if check(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} never showed in:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn admin_addr(line: &str) -> String {
    line.split("admin=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
}

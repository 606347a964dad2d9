//! What a benchmark measured: per request kind an HDR histogram of latencies (microseconds, 3
//! significant digits, up to 10 minutes), counts and bytes; errors by class; and the summary
//! printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::mix::Kind;

/// Why a request failed, as counted in the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorClass {
    /// No connection, TLS failure, or the request could not be sent.
    Connect,
    /// An HTTP status other than 2xx (the code is kept: 429, 502 and 503 mean different things).
    Status(u16),
    /// The response started but its body failed.
    Body,
    /// No complete answer within `--timeout`.
    Timeout,
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorClass::Connect => f.write_str("connect"),
            ErrorClass::Status(code) => write!(f, "status {code}"),
            ErrorClass::Body => f.write_str("body"),
            ErrorClass::Timeout => f.write_str("timeout"),
        }
    }
}

const MAX_MICROS: u64 = 600_000_000;

/// One worker's measurements; merged at the end.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    latencies: BTreeMap<Kind, Histogram<u64>>,
    bytes: BTreeMap<Kind, u64>,
    errors: BTreeMap<ErrorClass, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

impl Tally {
    pub fn ok(&mut self, kind: Kind, latency: Duration, bytes: u64) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.latencies.entry(kind).or_insert_with(histogram).saturating_record(micros);
        *self.bytes.entry(kind).or_default() += bytes;
    }

    pub fn error(&mut self, class: ErrorClass) {
        *self.errors.entry(class).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (kind, h) in &other.latencies {
            self.latencies.entry(*kind).or_insert_with(histogram).add(h).expect("same bounds");
        }
        for (kind, b) in &other.bytes {
            *self.bytes.entry(*kind).or_default() += b;
        }
        for (class, n) in &other.errors {
            *self.errors.entry(class.clone()).or_default() += n;
        }
    }

    /// The summary over `elapsed`.
    pub fn report(&self, elapsed: Duration, target: &str) -> Report {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let kinds: BTreeMap<String, KindReport> = self
            .latencies
            .iter()
            .map(|(kind, h)| {
                let report = KindReport {
                    count: h.len(),
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p90_ms: ms(h.value_at_quantile(0.90)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    p999_ms: ms(h.value_at_quantile(0.999)),
                    max_ms: ms(h.max()),
                    mean_ms: h.mean() / 1000.0,
                    bytes: self.bytes.get(kind).copied().unwrap_or(0),
                };
                (kind.name().to_owned(), report)
            })
            .collect();
        let ok: u64 = kinds.values().map(|k| k.count).sum();
        let bytes: u64 = kinds.values().map(|k| k.bytes).sum();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Report {
            target: target.to_owned(),
            elapsed_s: elapsed.as_secs_f64(),
            ok,
            errors: self.errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            requests_per_s: ok as f64 / secs,
            mb_per_s: bytes as f64 / 1e6 / secs,
            kinds,
        }
    }
}

/// Latencies of one kind, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindReport {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Body bytes moved (received, or sent for uploads).
    pub bytes: u64,
}

/// The whole result (`--json` prints this).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub target: String,
    pub elapsed_s: f64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Failed requests by class (`status 503`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    pub requests_per_s: f64,
    /// Body megabytes (10^6) per second, both ways.
    pub mb_per_s: f64,
    pub kinds: BTreeMap<String, KindReport>,
}

impl Report {
    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let failed: u64 = self.errors.values().sum();
        let _ = writeln!(
            out,
            "{}: {} ok, {failed} failed in {:.1} s: {:.0} req/s, {:.2} MB/s",
            self.target, self.ok, self.elapsed_s, self.requests_per_s, self.mb_per_s
        );
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "kind", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "MB"
        );
        for (name, k) in &self.kinds {
            let _ = writeln!(
                out,
                "{name:<8} {:>9} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
                k.count,
                k.p50_ms,
                k.p90_ms,
                k.p99_ms,
                k.p999_ms,
                k.max_ms,
                k.bytes as f64 / 1e6
            );
        }
        for (class, n) in &self.errors {
            let _ = writeln!(out, "errors: {class}: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_and_errors_are_counted_by_class() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for ms in 1..=100u64 {
            let tally = if ms % 2 == 0 { &mut a } else { &mut b };
            tally.ok(Kind::Small, Duration::from_millis(ms), 10);
        }
        a.error(ErrorClass::Status(503));
        b.error(ErrorClass::Status(503));
        b.error(ErrorClass::Timeout);
        a.merge(&b);
        let report = a.report(Duration::from_secs(2), "test");
        let small = &report.kinds["small"];
        assert_eq!(small.count, 100);
        assert!((49.0..=51.0).contains(&small.p50_ms), "{small:?}");
        assert!((98.0..=100.1).contains(&small.p99_ms), "{small:?}");
        assert_eq!(small.bytes, 1000);
        assert_eq!(report.errors["status 503"], 2);
        assert_eq!(report.errors["timeout"], 1);
        assert!((report.requests_per_s - 50.0).abs() < 1e-9);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kinds"]["small"]["count"], 100);
        assert!(report.table().contains("status 503: 2"));
    }
}

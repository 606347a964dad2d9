//! Metrics in the Prometheus text exposition format (version 0.0.4), written by hand: counters and
//! histograms keyed by label values, a writer for the text, and the path figures of QUIC
//! connections that stub and agent both show. The stub's and the agent's own metrics are in
//! `stub::metrics` and `agent::metrics`; both are served at `/metrics` on the admin listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::transport::PathStats;

/// Escapes a label value: backslash, double quote and newline, as the format asks.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The text being written.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// `# HELP` and `# TYPE` of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.0, " {}", value as i64);
        } else {
            let _ = writeln!(self.0, " {value}");
        }
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Counters by label values.
#[derive(Debug)]
pub struct CounterVec {
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub const fn new(labels: &'static [&'static str]) -> CounterVec {
        CounterVec { labels, values: Mutex::new(BTreeMap::new()) }
    }

    pub fn add(&self, label_values: &[&str], n: u64) {
        debug_assert_eq!(label_values.len(), self.labels.len());
        let key = label_values.iter().map(|v| v.to_string()).collect();
        *self.values.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += n;
    }

    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1);
    }

    pub fn get(&self, label_values: &[&str]) -> u64 {
        let key: Vec<String> = label_values.iter().map(|v| v.to_string()).collect();
        self.values.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied().unwrap_or(0)
    }

    pub fn render(&self, text: &mut Text, name: &str, help: &str) {
        text.family(name, "counter", help);
        for (values, n) in self.values.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let labels: Vec<(&str, &str)> =
                self.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            text.sample(name, &labels, *n as f64);
        }
    }
}

/// Seconds: from 5 ms (a small GET on a LAN) to 10 minutes (a long watch).
pub const DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 600.0];

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Histograms by label values.
#[derive(Debug)]
pub struct HistogramVec {
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl HistogramVec {
    pub const fn new(labels: &'static [&'static str], buckets: &'static [f64]) -> HistogramVec {
        HistogramVec { labels, buckets, values: Mutex::new(BTreeMap::new()) }
    }

    pub fn observe(&self, label_values: &[&str], value: f64) {
        let key = label_values.iter().map(|v| v.to_string()).collect();
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let h =
            values.entry(key).or_insert_with(|| Histogram { counts: vec![0; self.buckets.len()], sum: 0.0, count: 0 });
        for (i, bound) in self.buckets.iter().enumerate() {
            if value <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += value;
        h.count += 1;
    }

    pub fn render(&self, text: &mut Text, name: &str, help: &str) {
        text.family(name, "histogram", help);
        let bucket_name = format!("{name}_bucket");
        for (values, h) in self.values.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut labels: Vec<(&str, &str)> =
                self.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let bounds: Vec<String> = self.buckets.iter().map(|b| b.to_string()).collect();
            for (bound, n) in bounds.iter().zip(&h.counts) {
                labels.push(("le", bound));
                text.sample(&bucket_name, &labels, *n as f64);
                labels.pop();
            }
            labels.push(("le", "+Inf"));
            text.sample(&bucket_name, &labels, h.count as f64);
            labels.pop();
            text.sample(&format!("{name}_sum"), &labels, h.sum);
            text.sample(&format!("{name}_count"), &labels, h.count as f64);
        }
    }
}

/// Reads one figure of a connection's path.
type PathFigure = fn(&PathStats) -> f64;

/// The path of each QUIC connection as quinn measures it (RTT, congestion window, packets sent
/// and lost): link quality, written alike by stub (one sample per agent connection, labelled)
/// and agent (its connection in use, no labels).
pub fn render_paths(text: &mut Text, paths: &[(Vec<(&str, &str)>, PathStats)]) {
    let families: [(&str, &str, &str, PathFigure); 5] = [
        ("tether_link_rtt_seconds", "gauge", "Smoothed round-trip time of a QUIC connection.", |p| p.rtt.as_secs_f64()),
        ("tether_link_cwnd_bytes", "gauge", "Congestion window of a QUIC connection.", |p| p.cwnd as f64),
        ("tether_link_sent_packets_total", "counter", "Packets sent on a QUIC connection.", |p| p.sent_packets as f64),
        ("tether_link_lost_packets_total", "counter", "Packets lost on a QUIC connection.", |p| p.lost_packets as f64),
        (
            "tether_link_mtu_bytes",
            "gauge",
            "Largest packet (UDP payload) MTU discovery found a QUIC path carries.",
            |p| f64::from(p.mtu),
        ),
    ];
    for (name, kind, help, figure) in families {
        text.family(name, kind, help);
        for (labels, stats) in paths {
            text.sample(name, labels, figure(stats));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads one escaped label value back (the inverse of [`escape`]).
    fn unescape(text: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn any_label_value_survives_escaping(value in "\\PC*|[\\\\\"\n a-z]*") {
            let escaped = escape(&value);
            prop_assert!(!escaped.contains('\n'));
            prop_assert_eq!(unescape(&escaped), Some(value));
        }

        #[test]
        fn every_sample_is_one_well_formed_line(name in "[a-z_]{1,20}", value in "\\PC{0,20}", n in 0u64..1_000_000) {
            let mut text = Text::default();
            text.sample(&name, &[("cluster", &value)], n as f64);
            let out = text.into_string();
            prop_assert_eq!(out.matches('\n').count(), 1);
            let expected_start = format!("{name}{{cluster=\"");
            let expected_end = format!("\"}} {n}\n");
            prop_assert!(out.starts_with(&expected_start));
            prop_assert!(out.ends_with(&expected_end));
        }
    }

    #[test]
    fn histograms_count_into_every_bucket_at_or_above_the_value() {
        let h = HistogramVec::new(&["cluster"], &[0.1, 1.0]);
        h.observe(&["dev"], 0.05);
        h.observe(&["dev"], 0.5);
        h.observe(&["dev"], 5.0);
        let mut text = Text::default();
        h.render(&mut text, "d", "help");
        let out = text.into_string();
        assert!(out.contains("d_bucket{cluster=\"dev\",le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("d_bucket{cluster=\"dev\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("d_bucket{cluster=\"dev\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("d_sum{cluster=\"dev\"} 5.55\n"), "{out}");
        assert!(out.contains("d_count{cluster=\"dev\"} 3\n"), "{out}");
    }
}

//! Log lines on stderr, for people (`--log-format text`, the default) or for log collectors
//! (`--log-format json`): one JSON object per line.
//!
//! A JSON line carries `timestamp`, `level`, `target` and `message`, the event's own fields as
//! keys beside them, and each span it happened in as a key of its own holding that span's fields:
//!
//! ```json
//! {"bytes":0,"connection":{"id":1,"replica":"hub-0","transport":"quic"},"level":"DEBUG",
//!  "message":"request done","request":{"id":"aef7595e7cfdf2ac","method":"GET",
//!  "path":"/api/v1/pods","user":"alice"},"status":200,"target":"tether::agent::forward",
//!  "timestamp":"2026-12-01T17:34:28.063745Z"}
//! ```
//!
//! (an agent's line, wrapped here; keys come in alphabetical order). The stub logs the same
//! request id, so `jq 'select(.request.id == "…")'` follows one request across both. An event
//! field never overwrites the line's own keys (it is written as `fields.NAME` instead), and a
//! span never overwrites an event field. `TETHER_LOG` takes the filter (`debug`,
//! `tether::stub=debug`) in both formats.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The format of log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the process's logger: `format` on stderr, filtered by `TETHER_LOG` (default `info`).
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.fmt_fields(JsonFields::new()).event_format(JsonLines).init(),
    }
}

/// Keys every line has; event fields of these names go under `fields` instead.
const RESERVED: [&str; 5] = ["timestamp", "level", "target", "message", "fields"];

/// One JSON object per event; see the module documentation for its shape.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(now_rfc3339()));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert("message".into(), visitor.message.take().map(Value::String).unwrap_or(Value::Null));
        let mut displaced = Map::new();
        for (key, value) in visitor.fields {
            if RESERVED.contains(&key.as_str()) {
                displaced.insert(key, value);
            } else {
                line.insert(key, value);
            }
        }
        if !displaced.is_empty() {
            line.insert("fields".into(), Value::Object(displaced));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let fields = span
                    .extensions()
                    .get::<FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Value>(f).ok())
                    .unwrap_or_else(|| Value::Object(Map::new()));
                // The innermost span of a name wins; an event field is never overwritten.
                let name = span.name();
                if !line.contains_key(name) || line[name].is_object() && !RESERVED.contains(&name) {
                    line.insert(name.to_owned(), fields);
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values: numbers and booleans stay what they are.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(crate::errors::chain(value)));
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    #[test]
    fn spans_become_keys_holding_their_fields_and_event_fields_keep_their_types() {
        let lines = lines_of(|| {
            let connection = tracing::info_span!("agent", cluster = "dev", name = "agent-0", transport = "quic");
            let _c = connection.enter();
            let request = tracing::info_span!("request", id = "r-1", method = "GET");
            let _r = request.enter();
            tracing::info!(status = 200u64, slow = false, "request done");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["message"], "request done");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["status"], 200);
        assert_eq!(line["slow"], false);
        assert_eq!(line["request"]["id"], "r-1");
        assert_eq!(line["agent"]["cluster"], "dev");
        assert_eq!(line["agent"]["transport"], "quic");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    }

    #[test]
    fn an_event_field_named_like_a_line_key_or_a_span_does_not_overwrite_it() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("request", id = "r-2");
            let _s = span.enter();
            tracing::warn!(level = "mine", request = "field", "odd names");
        });
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["level"], "mine");
        assert_eq!(line["request"], "field", "the event's own field stays");
    }

    #[test]
    fn text_that_needs_escaping_stays_one_parseable_line() {
        let lines = lines_of(|| tracing::error!(path = "/a\"b\nc", "quote \" and newline \n inside"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["path"], "/a\"b\nc");
    }
}

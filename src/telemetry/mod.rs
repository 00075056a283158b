//! Logs and trace ids: JSON lines in the Cloud Logging format when stdout is not a terminal
//! (or `RUNQ_LOG_FORMAT=json`), readable text on a terminal; a request middleware that joins
//! each request's logs to the caller's trace (`X-Cloud-Trace-Context` or `traceparent`);
//! Prometheus metrics ([`metrics`]); OpenTelemetry traces over OTLP when configured ([`otel`]).

pub mod metrics;
pub mod otel;

pub use otel::{OtlpError, OtlpSettings};

use std::fmt;
use std::io::IsTerminal;
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Instrument, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON unless stdout is a terminal.
    Auto,
    /// Cloud Logging structured JSON.
    Json,
    /// Readable text.
    Text,
}

/// Installs the global logger: `filter` (an `EnvFilter`; `info` when it doesn't parse), JSON or
/// text by `format`, trace ids qualified by the Google Cloud `project`. Postgres's notices
/// (`relation "_sqlx_migrations" already exists, skipping` at every start) are left out unless
/// the filter names `sqlx`. With `otlp`, runq's spans are also exported as OpenTelemetry
/// traces ([`otel`]); they are `info` spans, so a filter that puts `runq` below `info` drops
/// them too. Call inside the tokio runtime, and [`otel::shutdown`] before it ends.
pub fn init(
    filter: &str,
    format: LogFormat,
    project: Option<String>,
    otlp: Option<&OtlpSettings>,
) -> Result<(), OtlpError> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = if filter.to_string().contains("sqlx") {
        filter
    } else {
        filter.add_directive("sqlx::postgres::notice=warn".parse().expect("a valid directive"))
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let logs: Box<dyn Layer<Layered<EnvFilter, Registry>> + Send + Sync> = if json {
        let format = CloudLogging { project };
        tracing_subscriber::fmt::layer().fmt_fields(JsonFields::new()).event_format(format).boxed()
    } else {
        // Colours on a terminal only: a log piped to a file stays plain text.
        tracing_subscriber::fmt::layer().with_target(false).with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    let traces = otlp.map(otel::layer).transpose()?;
    // One global filter. (With the filter on the log layer alone, beside the exporter's own
    // filter, spans went missing from both: the submit's request span and the run span.)
    let result = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init();
    // A second init (tests, an embedding app with its own logger) keeps the first.
    drop(result);
    Ok(())
}

/// Formats events as Cloud Logging structured JSON: `severity`, `message`, `time`, the event's
/// and its spans' fields, and `logging.googleapis.com/trace` from a span's `trace_id`.
pub struct CloudLogging {
    /// Qualifies trace ids as `projects/{project}/traces/{id}`, which the Logs Explorer links.
    pub project: Option<String>,
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut map = Map::new();
        event.record(&mut JsonVisitor(&mut map));
        // Span fields (outermost first, so inner spans win), stored as JSON by `JsonFields`.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    for (k, v) in fields {
                        map.entry(k).or_insert(v);
                    }
                }
            }
        }
        if let Some(Value::String(trace)) = map.remove("trace_id") {
            let trace = match &self.project {
                Some(project) => format!("projects/{project}/traces/{trace}"),
                None => trace,
            };
            map.insert("logging.googleapis.com/trace".into(), Value::from(trace));
        }
        if let Some(Value::String(span)) = map.remove("span_id") {
            map.insert("logging.googleapis.com/spanId".into(), Value::from(span));
        }
        let meta = event.metadata();
        map.insert("severity".into(), Value::from(severity(meta.level())));
        map.insert("time".into(), Value::from(chrono::Utc::now().to_rfc3339()));
        map.insert("target".into(), Value::from(meta.target()));
        map.entry("message").or_insert(Value::from(""));
        writeln!(writer, "{}", Value::Object(map))
    }
}

/// A W3C `traceparent` (trace-context level 1): `VV-TRACE-PARENT-FF`, exactly 55 characters of
/// lowercase hex and dashes, the version not `ff`, the trace and parent ids not all zeros.
/// Returns the trace id and the parent (span) id; `None` for anything else, which callers drop.
/// The one parser of the header: request logs and the `trace_context` stored with a job.
pub fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    if value.len() != 55 || !value.is_ascii() {
        return None;
    }
    let (version, trace, parent, flags) = (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = [2, 35, 52].iter().all(|&i| value.as_bytes()[i] == b'-');
    let valid = dashes
        && [version, trace, parent, flags].iter().all(|part| lower_hex(part))
        && version != "ff"
        && nonzero(trace)
        && nonzero(parent);
    valid.then_some((trace, parent))
}

/// The request's `traceparent` header when it is valid ([`parse_traceparent`]); a malformed one
/// is dropped, never an error.
pub fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|tp| parse_traceparent(tp).is_some())
}

/// The trace context stored with a job submitted by this request, which its publish joins:
/// the request's own span when traces are exported, else the caller's `traceparent`.
pub fn job_trace_context(headers: &HeaderMap) -> Option<String> {
    otel::traceparent_of(&tracing::Span::current()).or_else(|| traceparent(headers).map(str::to_owned))
}

/// The trace and span ids a request belongs to, from `traceparent` (W3C) or Google's
/// `X-Cloud-Trace-Context: TRACE/SPAN;o=1`.
pub fn trace_ids(headers: &HeaderMap) -> Option<(String, Option<String>)> {
    if let Some((trace, span)) = traceparent(headers).and_then(parse_traceparent) {
        return Some((trace.to_owned(), Some(span.to_owned())));
    }
    let cloud = headers.get("x-cloud-trace-context").and_then(|v| v.to_str().ok())?;
    let (trace, rest) = cloud.split_once('/').unwrap_or((cloud, ""));
    let trace = trace.trim();
    if trace.is_empty() || trace.len() > 64 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let span = rest.split(';').next().filter(|s| !s.is_empty()).map(str::to_owned);
    Some((trace.to_ascii_lowercase(), span))
}

/// Middleware: runs the request in a span carrying its trace id, and logs its outcome.
pub async fn trace_request(request: Request, next: Next) -> Response {
    let (trace_id, span_id) = trace_ids(request.headers()).map_or((None, None), |(t, s)| (Some(t), s));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route pattern (`/jobs/{id}/status`), not the path, so metrics don't explode per id.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // A push delivery's own span (`push`, in the worker) is the server span of that request: the
    // request span around it is for logs only, so it isn't exported as a trace of its own.
    let span = if route == "/push" {
        tracing::info_span!("push_request", %method, %path, trace_id, span_id)
    } else {
        let name = format!("{method} {route}");
        tracing::info_span!("request", otel.name = %name, otel.kind = "server", http.request.method = %method,
            http.route = %route, http.response.status_code = tracing::field::Empty, %path, trace_id, span_id)
    };
    otel::set_remote_parent(&span, traceparent(request.headers()));
    if trace_id.is_none()
        && let Some(tp) = otel::traceparent_of(&span)
        && let Some((trace, _)) = parse_traceparent(&tp)
    {
        // No trace from the caller: the logs join the trace this request starts.
        span.record("trace_id", trace);
    }
    let started = Instant::now();
    async move {
        let response = next.run(request).await;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let labels = [("method", method.to_string()), ("route", route), ("status", status.to_string())];
        ::metrics::counter!(metrics::HTTP_REQUESTS, &labels).increment(1);
        ::metrics::histogram!(metrics::HTTP_SECONDS, &labels[..2]).record(latency_ms / 1000.0);
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else if !matches!(path.as_str(), "/healthz" | "/readyz") {
            tracing::debug!(status, latency_ms, "request");
        }
        response
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn trace_ids_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(trace_ids(&h), Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), Some("00f067aa0ba902b7".into()))));
        let mut h = HeaderMap::new();
        h.insert("x-cloud-trace-context", HeaderValue::from_static("105445aa7843bc8bf206b12000100000/1;o=1"));
        assert_eq!(trace_ids(&h), Some(("105445aa7843bc8bf206b12000100000".into(), Some("1".into()))));
        h.insert("x-cloud-trace-context", HeaderValue::from_static("not hex/1"));
        assert_eq!(trace_ids(&h), None);
    }

    #[test]
    fn traceparent_follows_w3c_or_is_dropped() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(valid), Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")));
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
        let long = format!("{valid}{}", "-0".repeat(1000));
        for bad in [
            "",
            // Uppercase hex, the reserved version, all-zero ids.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths and separators, non-hex, surrounding space, too long.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            long.as_str(),
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }
}

//! OpenTelemetry traces, exported over OTLP/gRPC when an endpoint is configured (off otherwise).
//!
//! Four kinds of span make one job's trace, joined across processes by W3C `traceparent`:
//! `request` (a server span per API request, a child of the caller's `traceparent` header),
//! `publish` (a producer span per Pub/Sub publish, a child of the context stored with the job
//! at submit; its own context travels as the message's `traceparent` attribute), `push` (a
//! consumer span per push delivery, a child of that attribute) and `run` (a run of the
//! function, a child of the push, with the job id, function, attempt and outcome).
//!
//! The spans are `tracing` spans; [`layer`] turns those four into OpenTelemetry spans, so the
//! code that makes them doesn't depend on whether tracing is on.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The spans exported; every other span (sqlx's, a user's) only carries log fields.
const EXPORTED: [&str; 4] = ["request", "publish", "push", "run"];

/// The process's exporter, kept to flush it at exit ([`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Where and as what traces are sent.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint, `http://localhost:4317` for a sidecar.
    pub endpoint: String,
    /// `service.name` of every span this process sends.
    pub service: String,
}

/// Why tracing couldn't start.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct OtlpError(String);

/// The layer that exports the four runq spans to `settings.endpoint`. Must be called inside
/// the tokio runtime (the gRPC channel lives on it); the batch runs on its own thread.
pub(super) fn layer<S>(settings: &OtlpSettings) -> Result<impl Layer<S> + use<S>, OtlpError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| OtlpError(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service.clone()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("runq");
    // A second init in one process (tests) keeps the first exporter, as it keeps the first logger.
    let _ = PROVIDER.set(provider);
    let only_ours =
        filter_fn(|meta| meta.is_span() && EXPORTED.contains(&meta.name()) && meta.target().starts_with("runq"));
    Ok(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_ours))
}

/// Sends the spans still buffered and stops the exporter; call once, before the runtime ends.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: traces not all sent at exit: {e}");
    }
}

/// True when spans are exported (an OTLP endpoint was configured).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == "traceparent" { self.0 } else { None }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Capture(Option<String>);

impl Injector for Capture {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Makes `span` a child of the remote span in `traceparent` (a header or a message attribute);
/// an absent or invalid one leaves the span where it is.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent.filter(|tp| super::parse_traceparent(tp).is_some()) else { return };
    let context = TraceContextPropagator::new().extract(&One(Some(tp)));
    if context.span().span_context().is_valid() {
        // Fails only when the span isn't recorded by the OpenTelemetry layer (tracing off).
        let _ = span.set_parent(context);
    }
}

/// `span`'s own context as a `traceparent`, when spans are exported; `None` otherwise.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut capture = Capture(None);
    TraceContextPropagator::new().inject_context(&context, &mut capture);
    capture.0
}

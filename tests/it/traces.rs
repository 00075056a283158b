//! OpenTelemetry traces: a real `runq dev` process exports over OTLP/gRPC to a collector served
//! by this test (the official OTLP trace service, from `opentelemetry-proto`), and one job's
//! spans (the submit request, the publish, the push, the run) form one trace, each the child of
//! the one before, across the API, Pub/Sub (the emulator) and the worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::{Dev, database_url, free_port};

/// One exported span, flattened: what the assertions read.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// The collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for s in scope.spans {
                    kept.push(Span {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve_collector(collector: Collector) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    port
}

/// The spans of one job (those carrying its id) and the request that submitted it.
fn job_spans<'a>(spans: &'a [Span], id: &str) -> (Option<&'a Span>, Vec<&'a Span>) {
    let of_job: Vec<&Span> =
        spans.iter().filter(|s| s.attributes.get("job_id").map(String::as_str) == Some(id)).collect();
    let trace = of_job.first().map(|s| s.trace_id.clone());
    let request = spans.iter().find(|s| Some(&s.trace_id) == trace.as_ref() && s.name == "POST /jobs");
    (request, of_job)
}

fn one<'a>(spans: &[&'a Span], name_prefix: &str) -> &'a Span {
    let found: Vec<&&Span> = spans.iter().filter(|s| s.name.starts_with(name_prefix)).collect();
    assert_eq!(found.len(), 1, "one `{name_prefix}` span expected, got {found:#?}");
    found[0]
}

/// Checks the chain request → publish → push → run of one job; returns the request span. A job
/// may be published twice (the relay can look before the outbox has marked it dispatched: a
/// duplicate by design, which the claim absorbs), so every publish and push is checked, and the
/// run's push must come from one of the publishes.
fn assert_chain<'a>(spans: &'a [Span], id: &str) -> &'a Span {
    let (request, of_job) = job_spans(spans, id);
    let request = request.unwrap_or_else(|| panic!("no POST /jobs span in the job's trace: {spans:#?}"));
    let named =
        |prefix: &str| -> Vec<&Span> { of_job.iter().copied().filter(|s| s.name.starts_with(prefix)).collect() };
    let (publishes, pushes) = (named("publish "), named("push "));
    assert!(!publishes.is_empty() && publishes.len() <= 2, "one publish, or two with the relay's: {publishes:#?}");
    assert!(!pushes.is_empty() && pushes.len() <= publishes.len() * 2, "{pushes:#?}");
    let run = one(&of_job, "run ");
    for s in publishes.iter().chain(&pushes).chain([&request, &run]) {
        assert_eq!(s.trace_id, request.trace_id, "one trace: {s:#?}");
        assert_eq!(s.service, "runq-dev");
    }
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.attributes["http.response.status_code"], "202");
    for publish in &publishes {
        assert_eq!(
            (publish.kind, &publish.parent_span_id),
            (SpanKind::Producer as i32, &request.span_id),
            "{publish:#?}"
        );
        assert_eq!(publish.name, "publish medium");
    }
    for push in &pushes {
        assert_eq!(push.kind, SpanKind::Consumer as i32, "{push:#?}");
        assert!(publishes.iter().any(|p| p.span_id == push.parent_span_id), "a push is a publish's child: {push:#?}");
    }
    assert!(pushes.iter().any(|p| p.span_id == run.parent_span_id), "the run is a push's child: {run:#?}");
    assert_eq!(run.name, "run echo");
    assert_eq!(run.attributes["function"], "echo");
    assert_eq!(run.attributes["attempt"], "1");
    assert_eq!(run.attributes["outcome"], "succeeded");
    request
}

async fn wait_succeeded(http: &reqwest::Client, api: &str, token: &str, id: &str) {
    let finished = async {
        loop {
            let status: Value = http
                .get(format!("{api}/jobs/{id}/status?wait=5"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match status["status"].as_str() {
                Some("succeeded") => return,
                Some("queued" | "running") => continue,
                other => panic!("job ended {other:?}: {status}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), finished).await.expect("the job succeeds");
}

#[sqlx::test]
async fn one_jobs_spans_form_one_trace_across_api_pubsub_and_worker(pool: PgPool) {
    let collector = Collector::default();
    let otlp_port = serve_collector(collector.clone()).await;
    let (api_port, emulator_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("runq-tracing-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let dev =
        Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)])
            .await;
    let token = dev.token.clone();
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();

    // A caller with a trace of its own: the submit joins it.
    let (caller_trace, caller_span) = (uuid::Uuid::new_v4().simple().to_string(), "00f067aa0ba902b7");
    let submit = |traceparent: Option<String>| {
        let mut request = http
            .post(format!("{api}/jobs"))
            .bearer_auth(&token)
            .json(&json!({"function": "echo", "args": {"value": 1}}));
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let joined = submit(Some(format!("00-{caller_trace}-{caller_span}-01"))).await;
    // A caller without one: the submit starts the trace.
    let started = submit(None).await;
    wait_succeeded(&http, &api, &token, &joined).await;
    wait_succeeded(&http, &api, &token, &started).await;

    // SIGTERM: the exporter sends what it still buffers before the process exits.
    dev.stop().await;

    let spans = collector.spans.lock().unwrap().clone();
    let request = assert_chain(&spans, &joined);
    assert_eq!((request.trace_id.as_str(), request.parent_span_id.as_str()), (caller_trace.as_str(), caller_span));
    let request = assert_chain(&spans, &started);
    assert_eq!(request.parent_span_id, "", "a request without a traceparent is the root");
    assert_ne!(request.trace_id, caller_trace);
    // Only runq's four kinds of span are exported (no sqlx or push-request spans).
    let names: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.name.split(' ').next().unwrap_or_default()).collect();
    for name in &names {
        assert!(
            ["GET", "POST", "PUT", "DELETE", "publish", "push", "run"].contains(name),
            "unexpected span {name}: {names:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An HTTP function gets the run span as its request's `traceparent`: its own spans join the
/// job's trace.
#[sqlx::test]
async fn an_http_functions_request_carries_the_run_span_as_its_traceparent(pool: PgPool) {
    let collector = Collector::default();
    let otlp_port = serve_collector(collector.clone()).await;
    // The function: records the traceparent of each call.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/f", listener.local_addr().unwrap());
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/f",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let tp = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
                record.lock().unwrap().push(tp);
                axum::Json(json!("ok"))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (api_port, emulator_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("runq-tracing-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("runq.toml");
    std::fs::write(&config, format!("[functions.traced]\nurl = \"{url}\"\n")).unwrap();
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("RUNQ_CONFIG", config.to_str().unwrap())];
    let dev = Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &env).await;
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    let job: Value = http
        .post(format!("{api}/jobs"))
        .bearer_auth(&dev.token)
        .json(&json!({"function": "traced"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_succeeded(&http, &api, &dev.token, &id).await;
    dev.stop().await;

    let spans = collector.spans.lock().unwrap().clone();
    let (_, of_job) = job_spans(&spans, &id);
    let run = one(&of_job, "run traced");
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let tp = calls[0].clone().expect("the call carries a traceparent");
    let (trace, parent) = runq::telemetry::parse_traceparent(&tp).expect("a valid traceparent");
    assert_eq!((trace, parent), (run.trace_id.as_str(), run.span_id.as_str()), "{tp} vs {run:#?}");
    std::fs::remove_dir_all(&dir).ok();
}

//! HTTP functions: a function that is a URL (any language, typically a team's own Cloud Run
//! service). The worker claims the job as for any function, then POSTs it there with an identity
//! token and reads the answer (`docs/http-functions.md` is the protocol); the run loop around it
//! is the same as a Rust function's: lease, coalesced progress, cancel, limits, outcome.

mod protocol;
mod token;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

pub use protocol::{DEFAULT_DEFER, MAX_BODY_BYTES, MAX_DEFER, MAX_LINE_BYTES};
pub use token::{DEFAULT_ACCOUNT, DEFAULT_METADATA_HOST, IdTokens, TokenError, TokenSource};

use super::{Backoff, Context, DynFunction, FunctionError, Policy, RunFuture};
use crate::job::Priority;

/// The NDJSON media type of a streamed answer.
pub const NDJSON: &str = "application/x-ndjson";
/// How long connecting to a function may take before the attempt fails (retryable).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP function as declared (in code with [`crate::App::http_function`], or in `runq.toml`):
/// its URL, the audience of its identity token, and the same policy as any function. The
/// timeout is the run's hard time limit: no final answer by then fails the job as `timeout`.
#[derive(Debug, Clone)]
pub struct HttpFunction {
    name: String,
    url: String,
    audience: Option<String>,
    policy: Policy,
}

impl HttpFunction {
    /// A function `name` served at `url`, with the default policy ([`super::DEFAULT_PRIORITY`],
    /// [`super::DEFAULT_MAX_ATTEMPTS`], [`super::DEFAULT_HARD_TIME_LIMIT`] as its timeout, ...)
    /// and the URL's origin as its audience (what a Cloud Run service accepts).
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            audience: None,
            policy: Policy {
                priority: super::DEFAULT_PRIORITY,
                max_attempts: super::DEFAULT_MAX_ATTEMPTS,
                backoff: Backoff::default(),
                soft_time_limit: None,
                hard_time_limit: super::DEFAULT_HARD_TIME_LIMIT,
                detached: false,
                queue: None,
                cloud_run_job: false,
            },
        }
    }

    /// The `aud` of the identity token (default: the URL's origin, `https://host`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long runq waits for the final answer (the run's hard time limit).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.hard_time_limit = timeout;
        self
    }

    /// The queue used when the submit names none.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.policy.priority = priority;
        self
    }

    /// Runs before the job fails for good.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.policy.max_attempts = max_attempts;
        self
    }

    /// The wait before each retry.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// A queue of its own (declare it with [`crate::App::queue`]).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.policy.queue = Some(Box::leak(queue.into().into_boxed_str()));
        self
    }

    /// Runs outside the push request (needed for a timeout over
    /// [`super::MAX_INLINE_TIME_LIMIT`]), as [`super::Function::detached`].
    pub fn detached(mut self, detached: bool) -> Self {
        self.policy.detached = detached;
        self
    }

    /// Runs each call from an execution of its own (`runq exec`; a Cloud Run Job execution),
    /// as [`super::Function::cloud_run_job`]: for calls of hours.
    pub fn cloud_run_job(mut self, cloud_run_job: bool) -> Self {
        self.policy.cloud_run_job = cloud_run_job;
        self
    }

    /// The declared name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL runq POSTs to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The policy as declared.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks the URL: `https://` (or `http://` when `allow_http`, for `runq dev` and tests),
    /// with a host, no user info, no fragment. Returns the audience the tokens are for.
    pub fn check_url(&self, allow_http: bool) -> Result<String, String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("{:?} is not a URL: {e}", self.url))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => return Err(format!("{:?} is not https:// (plain http is allowed in `runq dev` only)", self.url)),
            other => return Err(format!("{:?}: the scheme must be https, not {other}", self.url)),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{:?} has no host", self.url));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(format!("{:?}: no user info or #fragment in a function's URL", self.url));
        }
        if let Some(audience) = &self.audience {
            if audience.trim().is_empty() {
                return Err("the audience is empty".into());
            }
            return Ok(audience.clone());
        }
        Ok(url.origin().ascii_serialization())
    }

    /// The registered form, calling through `invoker`; `allow_http` as in [`Self::check_url`].
    pub(crate) fn into_dyn(self, invoker: Arc<Invoker>, allow_http: bool) -> Result<Arc<dyn DynFunction>, String> {
        let audience = self.check_url(allow_http)?;
        let name: &'static str = Box::leak(self.name.into_boxed_str());
        Ok(Arc::new(Registered {
            name,
            target: Arc::new(Target { url: self.url, audience }),
            policy: self.policy,
            invoker,
        }))
    }
}

/// What the worker calls HTTP functions with: one HTTP client (its connection pool) and the
/// identity tokens, shared by every HTTP function of a registry. Cheap to share.
#[derive(Default)]
pub struct Invoker {
    client: OnceLock<reqwest::Client>,
    tokens: IdTokens,
}

impl Invoker {
    /// The identity tokens (to point them at another metadata server: the emulator's locally).
    pub fn tokens(&self) -> &IdTokens {
        &self.tokens
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                // A POST that is redirected would be replayed as a GET: a redirect is an answer.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("runq/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with these settings builds")
        })
    }
}

struct Target {
    url: String,
    audience: String,
}

struct Registered {
    name: &'static str,
    target: Arc<Target>,
    policy: Policy,
    invoker: Arc<Invoker>,
}

impl DynFunction for Registered {
    fn name(&self) -> &'static str {
        self.name
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Any JSON: the function itself checks its args (a `4xx` answer fails the job at once).
    fn validate(&self, _args: &RawValue) -> Result<(), String> {
        Ok(())
    }

    fn call(&self, ctx: Context, args: &RawValue) -> RunFuture {
        let (target, invoker, args) = (self.target.clone(), self.invoker.clone(), args.to_owned());
        let timeout = self.policy.hard_time_limit;
        Box::pin(async move {
            // Cancel (or the soft limit, a lapsing lease, shutdown) drops the exchange, and with
            // it the connection: the function sees its request end. The hard limit aborts this
            // task, which does the same.
            tokio::select! {
                biased;
                () = ctx.cancelled() => Err(FunctionError::Cancelled),
                out = exchange(&target, &invoker, &ctx, &args, timeout) => out,
            }
        })
    }
}

/// The request body (`docs/http-functions.md`).
#[derive(Serialize)]
struct Call<'a> {
    job_id: uuid::Uuid,
    attempt: u32,
    max_attempts: u32,
    args: &'a RawValue,
    /// When runq stops waiting (RFC 3339, UTC).
    deadline: String,
    /// A workflow step's inputs (its parents' results by step name), as `Context::inputs`
    /// gives them; absent outside a workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<serde_json::Value>,
}

async fn exchange(
    target: &Target,
    invoker: &Invoker,
    ctx: &Context,
    args: &RawValue,
    timeout: Duration,
) -> Result<serde_json::Value, FunctionError> {
    let client = invoker.client();
    let token = invoker.tokens.get(client, &target.audience).await.map_err(FunctionError::retryable)?;
    let deadline = chrono::Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    // One read by primary key; `{}` (so left out) for a job outside a workflow.
    let inputs = ctx.inputs().await.ok().filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
    let call = Call {
        job_id: ctx.job_id(),
        attempt: ctx.attempt(),
        max_attempts: ctx.max_attempts(),
        args,
        deadline: deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        inputs,
    };
    let body = serde_json::to_vec(&call).map_err(|e| FunctionError::Fatal(format!("args: {e}")))?;
    let mut request = client
        .post(&target.url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, format!("{NDJSON}, application/json"));
    // The run's span, so the function's own spans join the job's trace (when traces are on).
    if let Some(traceparent) = crate::telemetry::otel::traceparent_of(&tracing::Span::current()) {
        request = request.header("traceparent", traceparent);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| FunctionError::Retryable(format!("calling the function failed: {}", e.without_url())))?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(FunctionError::Deferred(protocol::retry_after(response.headers())));
    }
    let ndjson = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(NDJSON));
    if status.is_success() && ndjson {
        return protocol::read_ndjson(response, ctx).await;
    }
    let body = read_body(response).await?;
    if status.is_success() { protocol::json_result(&body) } else { Err(protocol::status_error(status, &body)) }
}

/// A whole (non-streamed) answer, at most [`MAX_BODY_BYTES`].
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, FunctionError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FunctionError::Retryable(format!("the function's answer broke off: {}", e.without_url())))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(FunctionError::Fatal(format!("the function's answer is over {MAX_BODY_BYTES} bytes")));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_the_audience_defaults_to_the_origin() {
        let f = HttpFunction::new("stt", "https://stt-abc.a.run.app/run?x=1");
        assert_eq!(f.check_url(false).unwrap(), "https://stt-abc.a.run.app");
        let f = HttpFunction::new("stt", "http://127.0.0.1:9000/run");
        assert!(f.check_url(false).unwrap_err().contains("https"));
        assert_eq!(f.check_url(true).unwrap(), "http://127.0.0.1:9000");
        let f = f.audience("https://stt.example.com");
        assert_eq!(f.check_url(true).unwrap(), "https://stt.example.com");
        for bad in ["ftp://x/y", "https://user:pw@x/", "https://x/#frag", "not a url", "https://"] {
            assert!(HttpFunction::new("f", bad).check_url(true).is_err(), "{bad}");
        }
    }
}

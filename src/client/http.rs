//! The API calls the command line makes, one method per endpoint, and the one error type that
//! tells a refused request (exit 2, the problem's `detail`) from a transient one (retried while
//! waiting: the API unreachable, restarting or overloaded).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ETAG, HeaderValue, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;

use crate::auth::UserAuthConfig as AuthSettings;
use crate::auth::mint_hs256;
use crate::job::JobStatus;

/// How long a token minted by the CLI lives; it is minted again well before it expires, so
/// a wait of hours keeps working.
const MINTED_TTL: Duration = Duration::from_secs(15 * 60);
const REMINT_AFTER: Duration = Duration::from_secs(5 * 60);
/// Longest problem text shown when an error answer is not `problem+json`.
const MAX_RAW_DETAIL: usize = 300;

/// Why a call to the API did not give the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line itself is wrong (bad `--args`, no token, bad URL): nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// No HTTP answer at all: connection refused, reset, timed out.
    #[error("can't reach the runq API at {url}: {reason}")]
    Unreachable {
        /// The URL that was called.
        url: String,
        /// The error and its causes, on one line.
        reason: String,
    },
    /// The API answered with an error status; `detail` is the problem's `detail`.
    #[error("{detail} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The problem+json `detail`, or the start of the body when it is not problem+json.
        detail: String,
        /// The `Retry-After` the API asked for, if any.
        retry_after: Option<Duration>,
    },
    /// An answer that is not what the API documents (not JSON, missing fields).
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The URL that was called.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// Whether waiting a little and asking again may succeed: the API is unreachable,
    /// restarting (502/503/504) or rate limiting (429). A refused request is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { status, .. } => matches!(
                *status,
                StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::GATEWAY_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            ),
            Self::Usage(_) | Self::Protocol { .. } => false,
        }
    }

    /// The `Retry-After` of an error answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Where the bearer token comes from.
enum Credentials {
    /// Given with `--token` or `RUNQ_TOKEN`.
    Fixed(String),
    /// Minted locally from `RUNQ_AUTH_HS256_SECRET`, and minted again as it ages.
    Minted { settings: Box<AuthSettings>, sub: String, current: Mutex<(String, Instant)> },
}

impl Credentials {
    fn mint(settings: &AuthSettings, sub: &str) -> Result<String, ClientError> {
        let secret = settings.hs256_secret.as_deref().unwrap_or_default();
        mint_hs256(
            secret,
            sub,
            false,
            MINTED_TTL,
            &settings.admin_claim,
            &settings.admin_value,
            settings.issuer.as_deref(),
            settings.audience.as_deref(),
        )
        .map_err(|e| ClientError::Usage(format!("can't mint a local token for {sub:?}: {e}")))
    }

    fn bearer(&self) -> Result<String, ClientError> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Minted { settings, sub, current } => {
                let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                if current.1.elapsed() >= REMINT_AFTER {
                    *current = (Self::mint(settings, sub)?, Instant::now());
                }
                Ok(current.0.clone())
            }
        }
    }
}

/// The answer to a status poll.
#[derive(Debug)]
pub enum Poll {
    /// `304`: nothing changed since the `ETag` that was sent.
    NotModified,
    /// The job's status view and its `ETag`.
    Changed {
        /// The status view.
        status: JobStatus,
        /// Send it back as `If-None-Match` on the next poll.
        etag: Option<String>,
    },
}

/// A client of one runq API with one identity.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
}

impl ApiClient {
    /// A client of the API at `base_url` with the first of: `token`; a token minted for `sub`
    /// with `auth`'s HS256 secret (and its issuer, audience and admin claim); else a usage error.
    pub fn new(base_url: &str, token: Option<String>, auth: &AuthSettings, sub: &str) -> Result<Self, ClientError> {
        let base = Url::parse(base_url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ClientError::Usage(format!("{base_url:?} is not an http(s) URL (--api-url, RUNQ_API_URL)"))
            })?;
        let credentials = match token.filter(|t| !t.trim().is_empty()) {
            Some(token) => Credentials::Fixed(token.trim().to_owned()),
            None => {
                let settings = auth.clone();
                if settings.hs256_secret.is_none() {
                    return Err(ClientError::Usage(
                        "no token: set RUNQ_TOKEN (or --token), or RUNQ_AUTH_HS256_SECRET to mint a local one".into(),
                    ));
                }
                let token = Credentials::mint(&settings, sub)?;
                Credentials::Minted {
                    settings: Box::new(settings),
                    sub: sub.to_owned(),
                    current: Mutex::new((token, Instant::now())),
                }
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("runq-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Usage(format!("can't build the HTTP client: {e}")))?;
        Ok(Self { http, base, credentials })
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded (an id can't
    /// escape its path segment).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("http URLs have a path").pop_if_empty().extend(segments);
        url
    }

    fn request(&self, method: Method, url: &Url) -> Result<RequestBuilder, ClientError> {
        Ok(self.http.request(method, url.clone()).bearer_auth(self.credentials.bearer()?))
    }

    async fn send(&self, url: &Url, request: RequestBuilder) -> Result<Response, ClientError> {
        request.send().await.map_err(|e| ClientError::Unreachable { url: url.to_string(), reason: chain(&e) })
    }

    /// `POST /jobs` with `body`; answers the job (`202` new, `200` an idempotent replay).
    pub async fn submit(&self, body: &Value, idempotency_key: Option<&str>) -> Result<Value, ClientError> {
        let url = self.url(&["jobs"]);
        let mut request = self.request(Method::POST, &url)?.json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = check(self.send(&url, request).await?).await?;
        json_body(&url, response).await
    }

    /// `GET /jobs/{id}`: the full job.
    pub async fn job(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&["jobs", id]);
        let response = check(self.send(&url, self.request(Method::GET, &url)?).await?).await?;
        json_body(&url, response).await
    }

    /// `GET /jobs/{id}/status`, conditional on `etag` when given.
    pub async fn status(&self, id: &str, etag: Option<&str>) -> Result<Poll, ClientError> {
        let url = self.url(&["jobs", id, "status"]);
        let mut request = self.request(Method::GET, &url)?;
        if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
            request = request.header(IF_NONE_MATCH, tag);
        }
        let response = self.send(&url, request).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(Poll::NotModified);
        }
        let response = check(response).await?;
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = serde_json::from_value(json_body(&url, response).await?)
            .map_err(|e| ClientError::Protocol { url: url.to_string(), reason: e.to_string() })?;
        Ok(Poll::Changed { status, etag })
    }

    /// `POST /jobs/{id}/cancel`: the HTTP status (`200` cancelled, `202` requested) and the job.
    pub async fn cancel(&self, id: &str) -> Result<(StatusCode, Value), ClientError> {
        let url = self.url(&["jobs", id, "cancel"]);
        let response = check(self.send(&url, self.request(Method::POST, &url)?).await?).await?;
        let code = response.status();
        Ok((code, json_body(&url, response).await?))
    }

    /// `POST /jobs/{id}/retry`: the job, queued again.
    pub async fn retry(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&["jobs", id, "retry"]);
        let response = check(self.send(&url, self.request(Method::POST, &url)?).await?).await?;
        json_body(&url, response).await
    }

    /// `POST /operations` with `body`: `{"count"}` for a dry run, else the operation.
    pub async fn start_operation(&self, body: &Value) -> Result<Value, ClientError> {
        let url = self.url(&["operations"]);
        let response = check(self.send(&url, self.request(Method::POST, &url)?.json(body)).await?).await?;
        json_body(&url, response).await
    }

    /// `GET /operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&["operations", id]);
        let response = check(self.send(&url, self.request(Method::GET, &url)?).await?).await?;
        json_body(&url, response).await
    }

    /// `method` on the path `segments` with an optional JSON `body`: the answer's JSON.
    pub async fn call(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Result<Value, ClientError> {
        let url = self.url(segments);
        let mut request = self.request(method, &url)?;
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = check(self.send(&url, request).await?).await?;
        json_body(&url, response).await
    }

    /// `GET /operations` with `limit`/`cursor`: `{"operations": [...], "next_cursor"}`.
    pub async fn operations(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let mut url = self.url(&["operations"]);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let response = check(self.send(&url, self.request(Method::GET, &url)?).await?).await?;
        json_body(&url, response).await
    }

    /// `GET /jobs` with the given filters: `{"jobs": [...], "next_cursor"}`.
    pub async fn list(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let mut url = self.url(&["jobs"]);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let response = check(self.send(&url, self.request(Method::GET, &url)?).await?).await?;
        json_body(&url, response).await
    }
}

/// Passes a success through; turns an error answer into [`ClientError::Api`] with its detail.
async fn check(response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    Err(ClientError::Api { status, detail: problem_detail(status, &body), retry_after })
}

/// The `detail` of a problem+json body (prefixed by its `field` when the detail doesn't name
/// it); else its `title`; else the start of the body; else the status's reason phrase.
pub fn problem_detail(status: StatusCode, body: &str) -> String {
    if let Ok(problem) = serde_json::from_str::<Value>(body) {
        let text = |name| problem.get(name).and_then(Value::as_str).filter(|t| !t.is_empty());
        if let Some(detail) = text("detail") {
            return match text("field") {
                Some(field) if !detail.contains(field) => format!("{field}: {detail}"),
                _ => detail.to_owned(),
            };
        }
        if let Some(title) = text("title") {
            return title.to_owned();
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return status.canonical_reason().unwrap_or("error").to_owned();
    }
    let mut end = body.len().min(MAX_RAW_DETAIL);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

async fn json_body(url: &Url, response: Response) -> Result<Value, ClientError> {
    let bytes =
        response.bytes().await.map_err(|e| ClientError::Unreachable { url: url.to_string(), reason: chain(&e) })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol { url: url.to_string(), reason: format!("not JSON: {e}") })
}

/// An error's causes on one line, without repeats: reqwest's own text ("error sending request
/// for url ...") says nothing the URL doesn't, its causes say why ("Connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() { error.to_string() } else { parts.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_detail_prefers_detail_then_title_then_body() {
        let s = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(
            problem_detail(s, r#"{"title":"Unprocessable","detail":"unknown function `x`"}"#),
            "unknown function `x`"
        );
        assert_eq!(problem_detail(s, r#"{"title":"Unprocessable"}"#), "Unprocessable");
        assert_eq!(problem_detail(s, r#"{"detail":"must be 1 to 5","field":"limit"}"#), "limit: must be 1 to 5");
        assert_eq!(problem_detail(s, r#"{"detail":"bad priority","field":"priority"}"#), "bad priority");
        assert_eq!(problem_detail(s, "  upstream broke  "), "upstream broke");
        assert_eq!(problem_detail(StatusCode::BAD_GATEWAY, ""), "Bad Gateway");
        assert_eq!(problem_detail(s, &"é".repeat(400)).len(), MAX_RAW_DETAIL);
    }

    #[test]
    fn transient_errors_are_the_ones_worth_retrying() {
        let api = |status| ClientError::Api { status, detail: String::new(), retry_after: None };
        assert!(api(StatusCode::SERVICE_UNAVAILABLE).is_transient());
        assert!(api(StatusCode::BAD_GATEWAY).is_transient());
        assert!(api(StatusCode::TOO_MANY_REQUESTS).is_transient());
        assert!(ClientError::Unreachable { url: String::new(), reason: String::new() }.is_transient());
        for refused in [StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED, StatusCode::UNPROCESSABLE_ENTITY] {
            assert!(!api(refused).is_transient());
        }
        assert!(!ClientError::Usage(String::new()).is_transient());
    }

    #[test]
    fn ids_stay_in_their_path_segment() {
        let client =
            ApiClient::new("http://127.0.0.1:9/prefix/", Some("t".into()), &AuthSettings::default(), "me").unwrap();
        assert_eq!(
            client.url(&["jobs", "../x?y", "status"]).as_str(),
            "http://127.0.0.1:9/prefix/jobs/..%2Fx%3Fy/status"
        );
        assert!(ApiClient::new("ftp://x", Some("t".into()), &AuthSettings::default(), "me").is_err());
        assert!(ApiClient::new("not a url", Some("t".into()), &AuthSettings::default(), "me").is_err());
    }
}

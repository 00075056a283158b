//! The answer of an HTTP function, read as `docs/http-functions.md` specifies it: a JSON
//! result, or `application/x-ndjson` lines (progress, child jobs, then one final result or error
//! line); without an explicit error, the status decides (4xx fatal, 5xx retryable, 429 defers).

use std::time::Duration;

use serde::Deserialize;

use crate::function::{ChildJob, Context, FunctionError};

/// The longest NDJSON line read (a progress line, a result line).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// The largest JSON answer (or NDJSON answer in all) read; results over 64 KiB go to GCS.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// A `429` defers the job by its `Retry-After`, at most this long.
pub const MAX_DEFER: Duration = Duration::from_secs(3600);
/// A `429` without a (readable) `Retry-After` defers the job this long.
pub const DEFAULT_DEFER: Duration = Duration::from_secs(10);

/// One NDJSON line of the answer. Unknown fields are ignored, so a newer function can send more.
#[derive(Debug, Deserialize)]
struct Line {
    progress: Option<f64>,
    message: Option<String>,
    spawn: Option<Vec<Child>>,
    result: Option<serde_json::Value>,
    error: Option<ExplicitError>,
    /// Seconds: the final line of a function that must wait (a quota, a busy upstream) after it
    /// began to stream, when a `429` status can no longer be sent.
    defer: Option<f64>,
}

/// `{"error": {"message": "...", "retryable": true}}`, in a line or as a non-2xx JSON body.
#[derive(Debug, Deserialize)]
pub struct ExplicitError {
    message: Option<String>,
    /// Default: not retryable (an explicit error says what it is).
    #[serde(default)]
    retryable: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ExplicitError,
}

/// A child job asked for in a `spawn` line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Child {
    function: String,
    #[serde(default)]
    args: serde_json::Value,
    priority: Option<crate::job::Priority>,
    unique_key: Option<String>,
}

impl ExplicitError {
    fn into_error(self, fallback: &str) -> FunctionError {
        let message = self.message.filter(|m| !m.is_empty()).unwrap_or_else(|| fallback.to_owned());
        if self.retryable { FunctionError::Retryable(message) } else { FunctionError::Fatal(message) }
    }
}

/// The error for a non-2xx answer: its explicit error if the body has one, else by status.
pub fn status_error(status: reqwest::StatusCode, body: &[u8]) -> FunctionError {
    let what = format!("the function answered {status}");
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return error.into_error(&what);
    }
    if status.is_server_error() { FunctionError::Retryable(what) } else { FunctionError::Fatal(what) }
}

/// How long a `429` defers the job: its `Retry-After` (seconds, or an HTTP date), bounded by
/// [`MAX_DEFER`]; [`DEFAULT_DEFER`] without one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(value) = headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()) else {
        return DEFAULT_DEFER;
    };
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value) {
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)
    } else {
        DEFAULT_DEFER
    };
    delay.min(MAX_DEFER)
}

/// The result of a JSON (not NDJSON) 2xx answer: the body itself; an empty body is `null`.
pub fn json_result(body: &[u8]) -> Result<serde_json::Value, FunctionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| FunctionError::Fatal(format!("the function's answer is not JSON: {e}")))
}

/// Reads an NDJSON answer line by line as it streams: progress goes to `ctx` (the worker writes
/// it coalesced, fenced by the claim), child jobs are spawned through it, and the final line
/// ends the run. A stream that ends (or breaks) before a final line is a retryable error.
pub async fn read_ndjson(mut response: reqwest::Response, ctx: &Context) -> Result<serde_json::Value, FunctionError> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let mut line_no = 0usize;
    let mut message = String::new();
    loop {
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            line_no += 1;
            if let Some(done) = handle_line(&line, line_no, ctx, &mut message).await? {
                return Ok(done);
            }
        }
        if buffer.len() > MAX_LINE_BYTES {
            return Err(FunctionError::Fatal(format!(
                "line {} of the answer is over {MAX_LINE_BYTES} bytes",
                line_no + 1
            )));
        }
        let chunk = response
            .chunk()
            .await
            .map_err(|e| FunctionError::Retryable(format!("the function's answer broke off: {}", e.without_url())))?;
        let Some(chunk) = chunk else {
            // A last line without its newline still counts.
            if !buffer.is_empty() {
                line_no += 1;
                let line = std::mem::take(&mut buffer);
                if let Some(done) = handle_line(&line, line_no, ctx, &mut message).await? {
                    return Ok(done);
                }
            }
            return Err(FunctionError::Retryable("the function's answer ended without a result or error line".into()));
        };
        read += chunk.len();
        if read > MAX_BODY_BYTES {
            return Err(FunctionError::Fatal(format!("the function's answer is over {MAX_BODY_BYTES} bytes")));
        }
        buffer.extend_from_slice(&chunk);
    }
}

/// One line: `Some(result)` when it was the final result line, `Err` for an error line or a
/// malformed one.
async fn handle_line(
    raw: &[u8],
    line_no: usize,
    ctx: &Context,
    message: &mut String,
) -> Result<Option<serde_json::Value>, FunctionError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let line: Line = serde_json::from_slice(raw)
        .map_err(|e| FunctionError::Fatal(format!("line {line_no} of the answer is not a JSON object: {e}")))?;
    if let Some(error) = line.error {
        return Err(error.into_error("the function reported an error"));
    }
    if let Some(result) = line.result {
        return Ok(Some(result));
    }
    if let Some(secs) = line.defer {
        let delay = Duration::try_from_secs_f64(secs).map_err(|_| {
            FunctionError::Fatal(format!("line {line_no} of the answer defers by {secs} s, not a number of seconds"))
        })?;
        return Err(FunctionError::Deferred(delay.min(MAX_DEFER)));
    }
    if let Some(children) = line.spawn {
        let children = children
            .into_iter()
            .map(|c| ChildJob { function: c.function, args: c.args, priority: c.priority, unique_key: c.unique_key })
            .collect();
        ctx.spawn(children).await?;
    }
    if let Some(fraction) = line.progress {
        if let Some(m) = line.message {
            *message = m;
        }
        ctx.progress(fraction as f32, message.clone());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn without_an_explicit_error_the_status_decides() {
        assert!(matches!(status_error(StatusCode::BAD_REQUEST, b"oops"), FunctionError::Fatal(m) if m.contains("400")));
        assert!(matches!(status_error(StatusCode::BAD_GATEWAY, b""), FunctionError::Retryable(m) if m.contains("502")));
        let explicit = br#"{"error": {"message": "quota", "retryable": true}}"#;
        assert_eq!(status_error(StatusCode::BAD_REQUEST, explicit), FunctionError::Retryable("quota".into()));
        let fatal = br#"{"error": {"message": "bad audio"}}"#;
        assert_eq!(status_error(StatusCode::INTERNAL_SERVER_ERROR, fatal), FunctionError::Fatal("bad audio".into()));
    }

    #[test]
    fn retry_after_is_read_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), DEFAULT_DEFER);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Duration::from_secs(7));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), MAX_DEFER);
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = retry_after(&h);
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Duration::ZERO);
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), DEFAULT_DEFER);
    }

    #[test]
    fn a_json_answer_is_the_result() {
        assert_eq!(json_result(b" ").unwrap(), serde_json::Value::Null);
        assert_eq!(json_result(br#"{"text": "hi"}"#).unwrap(), serde_json::json!({"text": "hi"}));
        assert!(matches!(json_result(b"<html>"), Err(FunctionError::Fatal(_))));
    }

    #[tokio::test]
    async fn lines_report_progress_and_end_with_the_final_one() {
        let (ctx, control) = Context::new(uuid::Uuid::now_v7(), 1, 3);
        let mut message = String::new();
        let progress = br#"{"progress": 0.4, "message": "decoding"}"#;
        assert_eq!(handle_line(progress, 1, &ctx, &mut message).await.unwrap(), None);
        assert_eq!(control.progress.borrow().message.as_deref(), Some("decoding"));
        // A progress line without a message keeps the last one.
        assert_eq!(handle_line(br#"{"progress": 0.5}"#, 2, &ctx, &mut message).await.unwrap(), None);
        assert_eq!(control.progress.borrow().fraction, 0.5);
        assert_eq!(control.progress.borrow().message.as_deref(), Some("decoding"));
        assert_eq!(handle_line(b"  \r", 3, &ctx, &mut message).await.unwrap(), None);
        let done = handle_line(br#"{"result": {"text": "hi"}}"#, 4, &ctx, &mut message).await.unwrap();
        assert_eq!(done, Some(serde_json::json!({"text": "hi"})));
        let error = br#"{"error": {"message": "rate limited upstream", "retryable": true}}"#;
        let err = handle_line(error, 5, &ctx, &mut message).await.unwrap_err();
        assert_eq!(err, FunctionError::Retryable("rate limited upstream".into()));
        let bad = handle_line(b"progress 0.4", 6, &ctx, &mut message).await.unwrap_err();
        assert!(matches!(bad, FunctionError::Fatal(m) if m.contains("line 6")));
        // A defer line ends the run like a 429 would, bounded the same way.
        let defer = handle_line(br#"{"defer": 2.5}"#, 8, &ctx, &mut message).await.unwrap_err();
        assert_eq!(defer, FunctionError::Deferred(Duration::from_millis(2500)));
        let long = handle_line(br#"{"defer": 1e9}"#, 9, &ctx, &mut message).await.unwrap_err();
        assert_eq!(long, FunctionError::Deferred(MAX_DEFER));
        let negative = handle_line(br#"{"defer": -1}"#, 10, &ctx, &mut message).await.unwrap_err();
        assert!(matches!(negative, FunctionError::Fatal(m) if m.contains("line 10")));
        // Outside a worker there is no spawner: a spawn line is the run's fatal error.
        let spawn = br#"{"spawn": [{"function": "echo", "args": {"value": 1}}]}"#;
        assert!(matches!(handle_line(spawn, 7, &ctx, &mut message).await, Err(FunctionError::Fatal(_))));
    }
}

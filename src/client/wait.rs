//! Waiting for a job to finish: poll its status at the pace the API asks for (conditional on
//! the last `ETag`), retry through a restarting API, stop on Ctrl-C, and end with the final job.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{ApiClient, ClientError, Poll};
use super::progress::Progress;
use super::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_SUCCEEDED, print_json};

/// Bounds on the pace: the API's `poll_after_ms` is followed within these.
const MIN_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(2);
/// Backoff while the API is unreachable or answers 503: from the first to the cap, doubling.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A wait gives up (exit 2) after the API has failed continuously for this long.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long to wait before the next poll, given the API's hint.
pub fn poll_interval(poll_after_ms: Option<u64>) -> Duration {
    poll_after_ms.map_or(MAX_POLL, Duration::from_millis).clamp(MIN_POLL, MAX_POLL)
}

/// Waits for job `id` to finish, showing its progress; prints the final job as pretty JSON on
/// stdout. Returns the exit code: 0 succeeded, 1 failed or cancelled, 130 interrupted.
pub async fn wait(api: &ApiClient, id: &str) -> Result<u8, ClientError> {
    let mut display = Progress::new();
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling on this platform: just wait.
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        biased;
        () = interrupted => None,
        result = follow(api, id, &mut display) => Some(result),
    };
    display.finish();
    match outcome {
        None => {
            eprintln!("stopped waiting; job {id} keeps running. Resume with: runq wait {id}");
            Ok(EXIT_INTERRUPTED)
        }
        Some(Err(e)) => Err(e),
        Some(Ok(job)) => Ok(report(id, &job)),
    }
}

/// Prints the finished job and picks the exit code from its status.
fn report(id: &str, job: &Value) -> u8 {
    print_json(job);
    let status = job.get("status").and_then(Value::as_str).unwrap_or_default();
    let error = job.get("error").filter(|e| !e.is_null()).map(|e| {
        let field = |name| e.get(name).and_then(Value::as_str).unwrap_or("?");
        format!("{}: {}", field("kind"), field("message"))
    });
    match (status, error) {
        ("succeeded", _) => EXIT_SUCCEEDED,
        ("failed", error) => {
            eprintln!("job {id} failed: {}", error.as_deref().unwrap_or("no error recorded"));
            EXIT_JOB_FAILED
        }
        ("cancelled", error) => {
            match error {
                Some(error) => eprintln!("job {id} was cancelled: {error}"),
                None => eprintln!("job {id} was cancelled"),
            }
            EXIT_JOB_FAILED
        }
        (other, _) => {
            eprintln!("job {id} ended in an unexpected status {other:?}");
            EXIT_ERROR
        }
    }
}

/// Polls until the job is finished, then fetches the full job.
async fn follow(api: &ApiClient, id: &str, display: &mut Progress) -> Result<Value, ClientError> {
    let mut etag: Option<String> = None;
    let mut pace = MIN_POLL;
    let mut outage = Outage::default();
    loop {
        match api.status(id, etag.as_deref()).await {
            Ok(Poll::NotModified) => outage.over(display),
            Ok(Poll::Changed { status, etag: tag }) => {
                outage.over(display);
                display.update(&status);
                if status.status.is_finished() {
                    break;
                }
                etag = tag;
                pace = poll_interval(status.poll_after_ms);
            }
            Err(e) if e.is_transient() => {
                tokio::time::sleep(outage.next(e, display)?).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(pace).await;
    }
    loop {
        match api.job(id).await {
            Ok(job) => return Ok(job),
            Err(e) if e.is_transient() => tokio::time::sleep(outage.next(e, display)?).await,
            Err(e) => return Err(e),
        }
    }
}

/// A run of transient failures: the backoff, and when it started (to give up eventually).
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    failures: u32,
}

impl Outage {
    /// Records a failure; the pause before trying again, or the error when it's time to give up.
    fn next(&mut self, error: ClientError, display: &mut Progress) -> Result<Duration, ClientError> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= GIVE_UP_AFTER {
            return Err(error);
        }
        let pause = backoff(self.failures, error.retry_after());
        if self.failures == 0 {
            display.note(&format!("{error}; retrying until it answers (Ctrl-C to stop)"));
        }
        self.failures += 1;
        Ok(pause)
    }

    /// The API answered again.
    fn over(&mut self, display: &mut Progress) {
        if self.since.take().is_some() {
            self.failures = 0;
            if let Progress::Lines { .. } = display {
                display.note("the API answers again");
            }
            display.restore();
        }
    }
}

/// The pause after `failures` earlier failures: doubling from [`FIRST_BACKOFF`] with jitter,
/// at least the API's `Retry-After`, at most [`MAX_BACKOFF`].
pub fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1 << failures.min(10)).min(MAX_BACKOFF);
    let jittered = exp.mul_f64(rand::random_range(0.5..=1.0));
    jittered.max(retry_after.unwrap_or_default()).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_pace_follows_the_hint_within_bounds() {
        assert_eq!(poll_interval(Some(500)), Duration::from_millis(500));
        assert_eq!(poll_interval(Some(1)), MIN_POLL);
        assert_eq!(poll_interval(Some(10_000)), MAX_POLL);
        assert_eq!(poll_interval(None), MAX_POLL);
    }

    #[test]
    fn backoff_grows_honours_retry_after_and_is_capped() {
        for _ in 0..50 {
            let first = backoff(0, None);
            assert!(first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF, "{first:?}");
            assert!(backoff(3, None) >= FIRST_BACKOFF * 4);
            assert!(backoff(30, None) <= MAX_BACKOFF);
            assert!(backoff(0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
            assert_eq!(backoff(0, Some(Duration::from_secs(60))), MAX_BACKOFF);
        }
    }
}

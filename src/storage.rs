//! Google Cloud Storage access: large job results and function inputs, as `gs://bucket/object` URIs.
//!
//! Owns the [`BlobStore`] (put, size-capped get, idempotent delete), the `gs://` URI type, the
//! [`StorageError`] that tells a retry from a lost cause, and the name of a run's result object.
//!
//! Reads and writes go through the official `google-cloud-storage` client (the JSON API). That
//! crate deletes objects only over gRPC (`StorageControl`), which `fake-gcs-server` doesn't serve,
//! so [`BlobStore::delete`] sends the JSON API's `DELETE` itself with the same credentials: one code
//! path in production and in tests. The crate ignores `STORAGE_EMULATOR_HOST`; [`StorageSettings`]
//! reads it and points every request at the emulator with anonymous credentials.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;
use uuid::Uuid;

/// Google's endpoint for the JSON API.
pub const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";
/// Default [`StorageSettings::max_read_bytes`]: 32 MiB, so an argument naming a huge object can't
/// make a worker read it into memory.
pub const DEFAULT_MAX_READ_BYTES: usize = 32 * 1024 * 1024;
/// How long the client keeps retrying one transient failure before giving up. Short on purpose:
/// a job's own retries (with backoff, fenced by its claim) take over from there.
pub const RETRY_TIME_LIMIT: Duration = Duration::from_secs(30);
/// Timeout of one `DELETE` request.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// With the emulator, uploads up to this size are single-shot: `fake-gcs-server` serves the simple
/// and multipart uploads the crate uses below its resumable threshold (16 MiB by default).
const EMULATOR_RESUMABLE_THRESHOLD: usize = 1 << 30;

/// The object a run's large result is written to. The claim id is part of the name, so a stale
/// run's late upload can never overwrite the result of the run that replaced it; only the object
/// the winning outcome records is ever read.
pub fn result_object_name(job_id: Uuid, claim_id: Uuid) -> String {
    format!("results/{job_id}/{claim_id}.json")
}

/// How to reach Cloud Storage, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// `STORAGE_EMULATOR_HOST` (`http://127.0.0.1:4443` or `127.0.0.1:4443`): talk to this emulator
    /// with anonymous credentials instead of Google with Application Default Credentials.
    pub emulator_host: Option<String>,
    /// `RUNQ_STORAGE_MAX_READ_BYTES`: [`BlobStore::get`] refuses larger objects.
    pub max_read_bytes: usize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self { emulator_host: None, max_read_bytes: DEFAULT_MAX_READ_BYTES }
    }
}

impl StorageSettings {
    /// Settings for the emulator at `host`, e.g. in tests.
    pub fn emulator(host: impl Into<String>) -> Self {
        Self { emulator_host: Some(host.into()), ..Self::default() }
    }
}

/// The emulator's base URL from `STORAGE_EMULATOR_HOST`, which Google's libraries accept with or
/// without a scheme.
pub fn emulator_endpoint(host: &str) -> Result<String, String> {
    let host = host.trim();
    let url = if host.starts_with("http://") || host.starts_with("https://") {
        host.to_owned()
    } else {
        format!("http://{host}")
    };
    match reqwest::Url::parse(&url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) && parsed.path() == "/" => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(format!("{host:?} is not an emulator address like http://127.0.0.1:4443")),
    }
}

/// Why a storage operation failed. [`StorageError::is_retryable`] tells a transient failure (try
/// again later) from one that another attempt won't fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// Not a usable `gs://bucket/object` URI, bucket or object name.
    #[error("invalid GCS location {input:?}: {reason}")]
    BadUri { input: String, reason: String },
    /// The object (or its bucket) doesn't exist.
    #[error("{uri} not found")]
    NotFound { uri: String },
    /// The credentials may not do this, or there are no usable credentials.
    #[error("access to {uri} denied: {message}")]
    Forbidden { uri: String, message: String },
    /// The object is larger than the read limit; nothing more than the limit was read.
    #[error("{uri} is larger than the {limit}-byte read limit{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    TooLarge { uri: String, size: Option<u64>, limit: usize },
    /// A failure that may pass: network, timeout, throttling, a 5xx.
    #[error("GCS request for {uri} failed (transient): {message}")]
    Transient { uri: String, message: String },
    /// Any other failure the service or the client reported.
    #[error("GCS request for {uri} failed: {message}")]
    Permanent { uri: String, message: String },
    /// The client could not be built (bad endpoint, no credentials).
    #[error("GCS client setup failed: {0}")]
    Setup(String),
}

impl StorageError {
    /// True when the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    fn bad(input: &str, reason: impl Into<String>) -> Self {
        Self::BadUri { input: input.into(), reason: reason.into() }
    }

    /// Sorts an error of the Google client into transient and permanent kinds.
    fn from_gcs(uri: &GcsUri, e: google_cloud_storage::Error) -> Self {
        let uri = uri.to_string();
        let message = e.to_string();
        if let Some(code) = e.http_status_code() {
            return Self::from_http_status(uri, code, message);
        }
        if let Some(status) = e.status() {
            return match status.code.name() {
                "NOT_FOUND" => Self::NotFound { uri },
                "PERMISSION_DENIED" | "UNAUTHENTICATED" => Self::Forbidden { uri, message },
                "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "RESOURCE_EXHAUSTED" | "ABORTED" => {
                    Self::Transient { uri, message }
                }
                _ => Self::Permanent { uri, message },
            };
        }
        if e.is_transient_and_before_rpc() || e.is_timeout() || e.is_io() || e.is_transport() || e.is_exhausted() {
            return Self::Transient { uri, message };
        }
        if e.is_authentication() {
            return Self::Forbidden { uri, message };
        }
        Self::Permanent { uri, message }
    }

    fn from_http_status(uri: String, code: u16, message: String) -> Self {
        match code {
            404 => Self::NotFound { uri },
            401 | 403 => Self::Forbidden { uri, message },
            408 | 429 | 500..=599 => Self::Transient { uri, message },
            _ => Self::Permanent { uri, message },
        }
    }
}

/// A validated `gs://bucket/object` location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GcsUri {
    bucket: String,
    object: String,
}

impl GcsUri {
    /// Checks `bucket` and `object` against GCS's naming rules.
    pub fn new(bucket: &str, object: &str) -> Result<Self, StorageError> {
        validate_bucket(bucket).map_err(|r| StorageError::bad(bucket, r))?;
        validate_object(object).map_err(|r| StorageError::bad(object, r))?;
        Ok(Self { bucket: bucket.into(), object: object.into() })
    }

    /// Parses `gs://bucket/object`; the object name may contain `/`.
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let rest = uri.strip_prefix("gs://").ok_or_else(|| StorageError::bad(uri, "must start with gs://"))?;
        let (bucket, object) =
            rest.split_once('/').ok_or_else(|| StorageError::bad(uri, "must name an object: gs://bucket/object"))?;
        validate_bucket(bucket).map_err(|r| StorageError::bad(uri, r))?;
        validate_object(object).map_err(|r| StorageError::bad(uri, r))?;
        Ok(Self { bucket: bucket.into(), object: object.into() })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object's name.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The bucket as the Google client names it: `projects/_/buckets/{bucket}`.
    fn bucket_resource(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }
}

impl fmt::Display for GcsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.object)
    }
}

impl FromStr for GcsUri {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// GCS bucket naming: 3-63 characters (222 with dots, 63 per dot-separated part) of `a-z`, `0-9`,
/// `-`, `_` and `.`, starting and ending with a letter or digit.
fn validate_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is empty".into());
    }
    let max = if bucket.contains('.') { 222 } else { 63 };
    if bucket.len() < 3 || bucket.len() > max {
        return Err(format!("the bucket name must be 3-{max} characters long"));
    }
    if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)) {
        return Err("the bucket name may only contain a-z, 0-9, '-', '_' and '.'".into());
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
        return Err("the bucket name must start and end with a letter or digit".into());
    }
    if bucket.split('.').any(|part| part.is_empty() || part.len() > 63) {
        return Err("each dot-separated part of the bucket name must be 1-63 characters long".into());
    }
    Ok(())
}

/// GCS object naming: 1-1024 bytes of UTF-8, no carriage return or line feed, not `.` or `..`.
/// Other control characters are refused too: GCS discourages them and they hide in logs.
fn validate_object(object: &str) -> Result<(), String> {
    if object.is_empty() {
        return Err("the object name is empty".into());
    }
    if object.len() > 1024 {
        return Err("the object name is longer than 1024 bytes".into());
    }
    if object == "." || object == ".." {
        return Err("the object name may not be '.' or '..'".into());
    }
    if object.chars().any(char::is_control) {
        return Err("the object name may not contain control characters".into());
    }
    Ok(())
}

/// Cloud Storage for runq: job results too large to keep inline, and inputs functions read by URI.
///
/// Built once per process and shared (`Arc<BlobStore>`): it holds a connection pool and cached
/// credentials.
pub struct BlobStore {
    client: Storage,
    credentials: Credentials,
    http: reqwest::Client,
    endpoint: String,
    max_read_bytes: usize,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("endpoint", &self.endpoint)
            .field("max_read_bytes", &self.max_read_bytes)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Builds the client: the emulator with anonymous credentials when one is configured, else
    /// Google with Application Default Credentials (the service account on Cloud Run).
    pub async fn new(settings: &StorageSettings) -> Result<Self, StorageError> {
        let (endpoint, credentials) = match &settings.emulator_host {
            Some(host) => (
                emulator_endpoint(host).map_err(StorageError::Setup)?,
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            ),
            None => (
                GOOGLE_ENDPOINT.to_owned(),
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| StorageError::Setup(format!("no Google credentials: {e}")))?,
            ),
        };
        let mut builder = Storage::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(credentials.clone())
            .with_retry_policy(RetryableErrors.with_time_limit(RETRY_TIME_LIMIT));
        if settings.emulator_host.is_some() {
            builder = builder.with_resumable_upload_threshold(EMULATOR_RESUMABLE_THRESHOLD);
        }
        let client = builder.build().await.map_err(|e| StorageError::Setup(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(DELETE_TIMEOUT)
            .build()
            .map_err(|e| StorageError::Setup(format!("HTTP client: {e}")))?;
        Ok(Self { client, credentials, http, endpoint, max_read_bytes: settings.max_read_bytes })
    }

    /// The base URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The largest object [`BlobStore::get`] reads.
    pub fn max_read_bytes(&self) -> usize {
        self.max_read_bytes
    }

    /// Writes `bytes` to `bucket/object` (replacing any object of that name) and returns its
    /// `gs://` URI.
    ///
    /// The write is retried on transient errors as if idempotent: runq writes each name with one
    /// content only (see [`result_object_name`]), so a repeated write can't clobber anything.
    pub async fn put(
        &self,
        bucket: &str,
        object: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let uri = GcsUri::new(bucket, object)?;
        self.client
            .write_object(uri.bucket_resource(), uri.object(), bytes)
            .set_content_type(content_type)
            .with_idempotency(true)
            // Buffered: below the resumable threshold the crate then sends the CRC32C up front in the
            // object metadata (GCS refuses a corrupted upload) in a two-part multipart request. The
            // unbuffered single shot sends it as a third, trailing part instead, which
            // fake-gcs-server stores as the object's content.
            .send_buffered()
            .await
            .map_err(|e| StorageError::from_gcs(&uri, e))?;
        Ok(uri.to_string())
    }

    /// Reads the whole object at `uri` (`gs://bucket/object`) into memory, refusing objects larger
    /// than [`StorageSettings::max_read_bytes`] before reading them when GCS reports the size, and
    /// as soon as the limit is passed otherwise.
    pub async fn get(&self, uri: &str) -> Result<Bytes, StorageError> {
        let uri = GcsUri::parse(uri)?;
        let limit = self.max_read_bytes;
        let too_large = |size: Option<u64>| StorageError::TooLarge { uri: uri.to_string(), size, limit };
        let mut response = self
            .client
            .read_object(uri.bucket_resource(), uri.object())
            .send()
            .await
            .map_err(|e| StorageError::from_gcs(&uri, e))?;
        let size = u64::try_from(response.object().size).unwrap_or(0);
        if size > limit as u64 {
            return Err(too_large(Some(size)));
        }
        let mut buf = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| StorageError::from_gcs(&uri, e))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large(None));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Deletes the object at `uri`. A missing object is success, so cleanup can be repeated.
    pub async fn delete(&self, uri: &str) -> Result<(), StorageError> {
        let uri = GcsUri::parse(uri)?;
        let transient = |message: String| StorageError::Transient { uri: uri.to_string(), message };
        let mut url = reqwest::Url::parse(&self.endpoint).map_err(|e| StorageError::Setup(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| StorageError::Setup(format!("endpoint {} can't take a path", self.endpoint)))?
            .pop_if_empty()
            .extend(["storage", "v1", "b", uri.bucket(), "o", uri.object()]);
        let headers = match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => return Err(transient("credentials returned no headers".into())),
            Err(e) if e.is_transient() => return Err(transient(format!("credentials: {e}"))),
            Err(e) => {
                return Err(StorageError::Forbidden { uri: uri.to_string(), message: format!("credentials: {e}") });
            }
        };
        let response =
            self.http.delete(url).headers(headers).send().await.map_err(|e| transient(format!("DELETE: {e}")))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let message = format!("DELETE answered {status}: {}", body.chars().take(300).collect::<String>());
        Err(StorageError::from_http_status(uri.to_string(), status.as_u16(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_print() {
        let uri = GcsUri::parse("gs://my-bucket/a/b c/ünï.json").unwrap();
        assert_eq!(uri.bucket(), "my-bucket");
        assert_eq!(uri.object(), "a/b c/ünï.json");
        assert_eq!(uri.to_string(), "gs://my-bucket/a/b c/ünï.json");
        assert_eq!("gs://b.example.com/o".parse::<GcsUri>().unwrap().bucket(), "b.example.com");
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for (uri, why) in [
            ("s3://bucket/o", "gs://"),
            ("bucket/o", "gs://"),
            ("gs://bucket", "must name an object"),
            ("gs://bucket/", "object name is empty"),
            ("gs:///o", "bucket name is empty"),
            ("gs://ab/o", "3-63"),
            ("gs://Bucket/o", "a-z"),
            ("gs://-bucket/o", "start and end"),
            ("gs://bu..cket/o", "dot-separated"),
            ("gs://bucket/..", "'.' or '..'"),
            ("gs://bucket/a\nb", "control"),
        ] {
            let err = GcsUri::parse(uri).unwrap_err();
            assert!(matches!(err, StorageError::BadUri { .. }), "{uri}: {err:?}");
            assert!(err.to_string().contains(why), "{uri}: {err}");
        }
        let long = format!("gs://bucket/{}", "x".repeat(1025));
        assert!(GcsUri::parse(&long).is_err());
    }

    #[test]
    fn result_objects_are_fenced_by_the_claim() {
        let job = Uuid::now_v7();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(result_object_name(job, a), format!("results/{job}/{a}.json"));
        assert_ne!(result_object_name(job, a), result_object_name(job, b));
        assert!(GcsUri::new("bucket", &result_object_name(job, a)).is_ok());
    }

    #[test]
    fn emulator_host_with_or_without_scheme() {
        assert_eq!(emulator_endpoint("127.0.0.1:4443").unwrap(), "http://127.0.0.1:4443");
        assert_eq!(emulator_endpoint("http://localhost:4443/").unwrap(), "http://localhost:4443");
        assert_eq!(emulator_endpoint("https://gcs.test").unwrap(), "https://gcs.test");
        assert!(emulator_endpoint("http://").is_err());
        assert!(emulator_endpoint("http://host:1/some/path").is_err());
    }

    #[test]
    fn errors_know_what_is_retryable() {
        let s = |code| StorageError::from_http_status("gs://b/o".into(), code, "m".into());
        assert!(s(503).is_retryable());
        assert!(s(429).is_retryable());
        assert!(!s(400).is_retryable());
        assert_eq!(s(404), StorageError::NotFound { uri: "gs://b/o".into() });
        assert!(matches!(s(403), StorageError::Forbidden { .. }));
    }
}

//! A JWKS fetched over HTTP and cached, shared by the user and Google OIDC verifiers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::header::CACHE_CONTROL;
use tokio::time::Instant;

use super::{AuthConfigError, AuthError};

/// How long a key set is trusted when the response has no `Cache-Control: max-age`.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest a key set is trusted whatever `max-age` says, so a removed key dies within a day.
pub const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// At most one fetch per this interval, so a flood of tokens with made-up `kid`s (or a JWKS
/// that keeps failing) can't turn every request into a request to the issuer.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long one fetch may take before the key set counts as unavailable.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set larger than this is refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A verification key from the set, with the one algorithm it may verify. The algorithm is
/// derived from the key itself (RSA → RS256, EC P-256 → ES256), never from a token header, so
/// a token can't talk the verifier into HS256-with-the-public-key (`alg` confusion).
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The public key itself.
    pub key: DecodingKey,
}

/// One successful fetch: the keys by id, and until when they count as fresh.
struct Snapshot {
    /// Keys with a `kid`, by `kid`.
    by_kid: HashMap<String, VerifyingKey>,
    /// Keys without a `kid`: usable only by tokens without one, when there is exactly one.
    anonymous: Vec<VerifyingKey>,
    /// When the set was fetched; with `max_age`, when it goes stale.
    fetched_at: Instant,
    /// From `Cache-Control: max-age` (clamped), or [`DEFAULT_JWKS_MAX_AGE`].
    max_age: Duration,
}

impl Snapshot {
    /// The key a token with this `kid` must be verified with, if the set has it.
    fn find(&self, kid: Option<&str>) -> Option<VerifyingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.anonymous.len() == 1 && self.by_kid.is_empty() => self.anonymous.first().cloned(),
            None => None,
        }
    }

    /// Whether the set is younger than its max-age.
    fn is_fresh(&self, now: Instant) -> bool {
        now.duration_since(self.fetched_at) < self.max_age
    }
}

/// The last fetch attempt, successful or not: the rate limit counts attempts, not successes.
struct Attempt {
    /// When it started.
    at: Instant,
    /// Why it failed, if it did (kept so callers inside the rate-limit window get a 503 too).
    error: Option<String>,
}

/// A JWKS fetched over HTTP and cached. Refetched when a token names an unknown `kid` (keys
/// rotate) and when the set is older than its `Cache-Control: max-age`, but never more than
/// once per `min_refresh`. Concurrent misses wait on one fetch instead of each starting one.
/// When a refresh fails, the last good set keeps serving the keys it has (the issuer being
/// down must not lock out tokens we can still verify).
pub struct JwksCache {
    /// Where the key set lives.
    url: String,
    /// Shared HTTP client (connection pool, TLS config).
    http: reqwest::Client,
    /// See [`DEFAULT_JWKS_MIN_REFRESH`].
    min_refresh: Duration,
    /// The current key set; a std lock, never held across an await.
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Held for the whole fetch (single flight); records the last attempt for the rate limit.
    refresh: tokio::sync::Mutex<Option<Attempt>>,
}

impl JwksCache {
    /// A cache for the key set at `url` (`https://`, or `http://` for local emulators and tests).
    /// Nothing is fetched until the first token arrives.
    pub fn new(url: impl Into<String>, http: reqwest::Client) -> Result<Self, AuthConfigError> {
        let url = url.into();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| AuthConfigError::InvalidJwksUrl { url: url.clone(), reason: e.to_string() })?;
        match parsed.scheme() {
            "https" => {}
            "http" => tracing::warn!(%url, "JWKS fetched over plain http; use https in production"),
            other => {
                return Err(AuthConfigError::InvalidJwksUrl {
                    url: url.clone(),
                    reason: format!("scheme {other:?} is not http(s)"),
                });
            }
        }
        Ok(Self {
            url,
            http,
            min_refresh: DEFAULT_JWKS_MIN_REFRESH,
            snapshot: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// Overrides [`DEFAULT_JWKS_MIN_REFRESH`] (tests use 0 to observe every refetch, or a long
    /// interval to prove the rate limit holds).
    pub fn with_min_refresh(mut self, min_refresh: Duration) -> Self {
        self.min_refresh = min_refresh;
        self
    }

    /// The URL this cache fetches.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key a token with this `kid` must be verified with: from the cache when fresh,
    /// otherwise after one (rate-limited) refetch. [`AuthError::UnknownKey`] when the set
    /// doesn't have it; [`AuthError::JwksUnavailable`] when the set can't be fetched and the
    /// cache can't answer.
    pub(crate) async fn key(&self, kid: Option<&str>) -> Result<VerifyingKey, AuthError> {
        let now = Instant::now();
        let current = self.current();
        if let Some(snap) = &current
            && snap.is_fresh(now)
            && let Some(key) = snap.find(kid)
        {
            return Ok(key);
        }

        let mut last = self.refresh.lock().await;
        // Someone may have refreshed while we waited for the lock.
        let current = self.current();
        if let Some(snap) = &current
            && snap.fetched_at >= now
            && let Some(key) = snap.find(kid)
        {
            return Ok(key);
        }
        let rate_limited = last.as_ref().is_some_and(|a| Instant::now().duration_since(a.at) < self.min_refresh);
        if rate_limited {
            let failed = last.as_ref().and_then(|a| a.error.clone());
            return Self::answer_from(current.as_deref(), kid, failed);
        }

        let started = Instant::now();
        match self.fetch().await {
            Ok(snap) => {
                let snap = Arc::new(snap);
                *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snap.clone());
                *last = Some(Attempt { at: started, error: None });
                snap.find(kid).ok_or(AuthError::UnknownKey)
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "JWKS fetch failed");
                *last = Some(Attempt { at: started, error: Some(reason.clone()) });
                Self::answer_from(current.as_deref(), kid, Some(reason))
            }
        }
    }

    /// What to say without a new fetch: a stale-but-known key is still used; an unknown `kid`
    /// is unknown if the set was last fetched fine, unavailable if the last fetch failed.
    fn answer_from(
        snap: Option<&Snapshot>,
        kid: Option<&str>,
        failed: Option<String>,
    ) -> Result<VerifyingKey, AuthError> {
        match (snap.and_then(|s| s.find(kid)), failed) {
            (Some(key), _) => Ok(key),
            (None, Some(reason)) => Err(AuthError::JwksUnavailable(reason)),
            (None, None) => Err(AuthError::UnknownKey),
        }
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One GET of the key set. The error string is for logs and [`AuthError::JwksUnavailable`].
    async fn fetch(&self) -> Result<Snapshot, String> {
        let mut resp = self
            .http
            .get(&self.url)
            .timeout(JWKS_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let max_age =
            resp.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).map_or(DEFAULT_JWKS_MAX_AGE, parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading body: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("key set too large".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        let (by_kid, anonymous) = parse_jwks(&body)?;
        tracing::debug!(url = %self.url, keys = by_kid.len() + anonymous.len(), "JWKS fetched");
        Ok(Snapshot { by_kid, anonymous, fetched_at: Instant::now(), max_age })
    }
}

/// `max-age` from a `Cache-Control` value, clamped to [`MAX_JWKS_MAX_AGE`]; `no-cache` and
/// `no-store` mean 0 (every miss may refetch, still within the rate limit).
fn parse_max_age(value: &str) -> Duration {
    let mut max_age = DEFAULT_JWKS_MAX_AGE;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Duration::ZERO;
        }
        if let Some(secs) = lower.strip_prefix("max-age=")
            && let Ok(secs) = secs.trim_matches('"').parse::<u64>()
        {
            max_age = Duration::from_secs(secs);
        }
    }
    max_age.min(MAX_JWKS_MAX_AGE)
}

/// A JWK as published: only what picks and builds a verification key. Keys we can't use
/// (other types or curves, `use: enc`, an `alg` that contradicts the key) are skipped, so one
/// odd key doesn't make the whole set unusable.
#[derive(serde::Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

type ParsedKeys = (HashMap<String, VerifyingKey>, Vec<VerifyingKey>);

fn parse_jwks(body: &[u8]) -> Result<ParsedKeys, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut anonymous = Vec::new();
    for value in set.keys {
        let Ok(raw) = serde_json::from_value::<RawJwk>(value) else {
            continue;
        };
        let Some(key) = to_verifying_key(&raw) else {
            continue;
        };
        match raw.kid {
            Some(kid) => {
                by_kid.insert(kid, key);
            }
            None => anonymous.push(key),
        }
    }
    Ok((by_kid, anonymous))
}

/// RSA keys verify RS256 only, EC P-256 keys ES256 only; anything else is not for us.
fn to_verifying_key(raw: &RawJwk) -> Option<VerifyingKey> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let key = DecodingKey::from_rsa_components(raw.n.as_deref()?, raw.e.as_deref()?).ok()?;
            (Algorithm::RS256, key)
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (raw.x.as_deref()?, raw.y.as_deref()?);
            // 32-byte coordinates are 43 base64url characters; anything else is not P-256.
            if x.len() != 43 || y.len() != 43 {
                return None;
            }
            (Algorithm::ES256, DecodingKey::from_ec_components(x, y).ok()?)
        }
        _ => return None,
    };
    let alg_name = match alg {
        Algorithm::RS256 => "RS256",
        _ => "ES256",
    };
    if raw.alg.as_deref().is_some_and(|a| a != alg_name) {
        return None;
    }
    Some(VerifyingKey { alg, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("public, max-age=300, must-revalidate"), Duration::from_secs(300));
        assert_eq!(parse_max_age("MAX-AGE=\"60\""), Duration::from_secs(60));
        assert_eq!(parse_max_age("public"), DEFAULT_JWKS_MAX_AGE);
        assert_eq!(parse_max_age("no-store"), Duration::ZERO);
        assert_eq!(parse_max_age("max-age=99999999"), MAX_JWKS_MAX_AGE);
        assert_eq!(parse_max_age("max-age=abc"), DEFAULT_JWKS_MAX_AGE);
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let body = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"ps","alg":"PS256","n":"AQAB","e":"AQAB"},
            {"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"},
            {"kty":"RSA","kid":"ok","alg":"RS256","n":"AQAB","e":"AQAB"},
            "garbage"
        ]}"#;
        let (by_kid, anonymous) = parse_jwks(body).unwrap();
        assert_eq!(by_kid.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert!(anonymous.is_empty());
        assert!(parse_jwks(b"[]").is_err());
    }
}

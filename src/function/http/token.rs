//! Identity tokens for calling HTTP functions: Google ID tokens from the metadata server (the
//! one every Cloud Run instance has, or the Pub/Sub emulator's stand-in locally), cached per
//! audience until shortly before they expire, as Google's client libraries do.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;

/// The metadata server of a Google Cloud instance (what `GCE_METADATA_HOST` overrides).
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// The service account a Cloud Run instance runs as, in the metadata server's paths.
pub const DEFAULT_ACCOUNT: &str = "default";
/// A cached token is replaced when less than this is left of it (Google's tokens live an hour).
const REFRESH_MARGIN_SECS: i64 = 300;
/// How long one call to the metadata server may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where tokens come from: a metadata server and the account it signs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// `host[:port]` of the metadata server.
    pub metadata_host: String,
    /// `default` (the instance's own service account) or a service account's email.
    pub account: String,
}

impl Default for TokenSource {
    fn default() -> Self {
        Self { metadata_host: DEFAULT_METADATA_HOST.into(), account: DEFAULT_ACCOUNT.into() }
    }
}

/// Why no token could be had. Never carries a token.
#[derive(Debug, thiserror::Error)]
#[error("could not get an identity token from the metadata server at {host}: {reason}")]
pub struct TokenError {
    host: String,
    reason: String,
}

/// Identity tokens by audience, from one [`TokenSource`].
#[derive(Default)]
pub struct IdTokens {
    source: RwLock<TokenSource>,
    /// audience → (token, its `exp`, Unix seconds).
    cache: Mutex<HashMap<String, (String, i64)>>,
}

impl IdTokens {
    /// Takes tokens from `source` from now on (forgetting the cached ones).
    pub fn set_source(&self, source: TokenSource) {
        *self.source.write().expect("token source lock") = source;
        self.cache.lock().expect("token cache lock").clear();
    }

    /// Where tokens come from now.
    pub fn source(&self) -> TokenSource {
        self.source.read().expect("token source lock").clone()
    }

    /// A token for `audience`: the cached one while it has more than a few minutes left, else
    /// a fresh one from the metadata server.
    pub async fn get(&self, client: &reqwest::Client, audience: &str) -> Result<String, TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some((token, exp)) = self.cache.lock().expect("token cache lock").get(audience)
            && exp - now > REFRESH_MARGIN_SECS
        {
            return Ok(token.clone());
        }
        let source = self.source();
        let fail = |reason: String| TokenError { host: source.metadata_host.clone(), reason };
        let url = format!(
            "http://{}/computeMetadata/v1/instance/service-accounts/{}/identity",
            source.metadata_host, source.account
        );
        let response = client
            .get(&url)
            .query(&[("audience", audience), ("format", "full")])
            .header("Metadata-Flavor", "Google")
            .timeout(METADATA_TIMEOUT)
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("it answered {status}")));
        }
        let token = response.text().await.map_err(|e| fail(e.without_url().to_string()))?.trim().to_owned();
        let exp = expiry(&token).ok_or_else(|| fail("its answer is not a JWT with an `exp`".into()))?;
        self.cache.lock().expect("token cache lock").insert(audience.to_owned(), (token.clone(), exp));
        Ok(token)
    }
}

/// The `exp` of a JWT, read without verifying it (it is our own token, from our own metadata
/// server: only its lifetime matters here).
fn expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_is_read_from_the_payload() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("{}.{}.sig", b64.encode(r#"{"alg":"RS256"}"#), b64.encode(r#"{"exp":1700000000}"#));
        assert_eq!(expiry(&token), Some(1_700_000_000));
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry(&format!("a.{}.c", b64.encode("{}"))), None);
    }
}

//! Google OIDC tokens on `/push` and `/internal/*`: Pub/Sub push, Cloud Scheduler, dead-letter push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::AuthError;
use super::jwks::JwksCache;
use super::token::{decode, peek_header, validation};

/// Google's OIDC signing keys.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The two spellings of Google's issuer; ID tokens carry either.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Clock skew tolerated on `exp`/`nbf` of Google tokens.
pub const GOOGLE_LEEWAY_SECS: u64 = 30;

/// Who may call one endpoint with a Google OIDC token: the audience its subscription or
/// scheduler job signs for, and the service accounts allowed (empty: any verified email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleCallers {
    pub audience: String,
    pub service_accounts: Vec<String>,
}

impl GoogleCallers {
    /// The verifier of these callers' tokens, against `jwks`.
    pub fn verifier(&self, jwks: Arc<JwksCache>) -> GoogleOidcVerifier {
        GoogleOidcVerifier::new(jwks, self.audience.clone(), self.service_accounts.clone())
    }
}

/// The service account a verified Google OIDC token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// The verified `email` claim, e.g. `push@project.iam.gserviceaccount.com`.
    pub email: String,
}

/// Verifies the Google-signed OIDC tokens that Pub/Sub push, Cloud Scheduler and the
/// dead-letter push attach. One verifier per endpoint, because each has its own audience and
/// caller. Cheap to clone; share one [`JwksCache`] between them.
///
/// Checks: RS256 only, with a key from the JWKS; `iss` one of [`GOOGLE_ISSUERS`]; `aud` equal
/// to the expected audience; `exp`; `email_verified` true; `email` in `allowed_emails`.
#[derive(Clone)]
pub struct GoogleOidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Google's keys (or the emulator's, in tests).
    jwks: Arc<JwksCache>,
    /// The audience the push subscription or scheduler job was configured with.
    audience: String,
    /// Service-account emails allowed to call; empty means any verified email.
    allowed_emails: Vec<String>,
    /// Tokens this verifier accepted, until their `exp`: Pub/Sub reuses one push token for many
    /// pushes, and an RS256 check per push was most of a worker's CPU per job.
    verified: Mutex<Verified>,
}

/// How many accepted tokens a verifier remembers (one per push subscription and scheduler job
/// calling it, in practice).
pub const MAX_VERIFIED_TOKENS: usize = 256;

/// Accepted tokens by their SHA-256 (the token itself isn't kept), each with its email and
/// `exp`. A token is remembered only once every check passed, and served from here only before
/// its `exp` (without the leeway a fresh check allows), so a hit never accepts what a full check
/// would refuse, except a token whose signing key Google dropped from its JWKS since, which stays
/// accepted until its `exp` (at most an hour for Google's ID tokens).
#[derive(Default)]
struct Verified {
    tokens: HashMap<[u8; 32], (String, u64)>,
}

impl Verified {
    /// The email of an accepted token that hasn't expired at `now` (Unix seconds).
    fn get(&self, digest: &[u8; 32], now: u64) -> Option<String> {
        self.tokens.get(digest).filter(|(_, exp)| *exp > now).map(|(email, _)| email.clone())
    }

    /// Remembers an accepted token; when full, expired ones go first, then everything.
    fn insert(&mut self, digest: [u8; 32], email: String, exp: u64, now: u64) {
        if self.tokens.len() >= MAX_VERIFIED_TOKENS {
            self.tokens.retain(|_, (_, e)| *e > now);
            if self.tokens.len() >= MAX_VERIFIED_TOKENS {
                self.tokens.clear();
            }
        }
        self.tokens.insert(digest, (email, exp));
    }
}

impl GoogleOidcVerifier {
    /// A verifier for one endpoint. `allowed_emails` empty means *any* Google-verified email is
    /// accepted: only safe when the audience alone is secret enough (e.g. local runs); in
    /// production list the push/scheduler service accounts. Emails compare case-insensitively.
    pub fn new(jwks: Arc<JwksCache>, audience: String, allowed_emails: Vec<String>) -> Self {
        if allowed_emails.is_empty() {
            tracing::warn!(%audience, "Google OIDC verifier accepts any verified email");
        }
        Self { inner: Arc::new(Inner { jwks, audience, allowed_emails, verified: Mutex::default() }) }
    }

    /// Verifies the `Authorization: Bearer` token of a request (a push, a scheduler call).
    pub async fn verify_request(&self, headers: &http::HeaderMap) -> Result<ServiceIdentity, AuthError> {
        self.verify(super::bearer_token(headers)?).await
    }

    /// Verifies the token and returns its caller; [`AuthError::Forbidden`] (403) when the token
    /// is valid but its email is not allowed here. Never logs the token.
    pub async fn verify(&self, token: &str) -> Result<ServiceIdentity, AuthError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(email) = self.inner.verified.lock().expect("verified tokens lock").get(&digest, now) {
            return Ok(ServiceIdentity { email });
        }
        let (identity, exp) = self.verify_fully(token).await?;
        self.inner.verified.lock().expect("verified tokens lock").insert(digest, identity.email.clone(), exp, now);
        Ok(identity)
    }

    /// How many accepted tokens this verifier remembers now.
    pub fn remembered_tokens(&self) -> usize {
        self.inner.verified.lock().expect("verified tokens lock").tokens.len()
    }

    /// Every check, with the token's `exp`.
    async fn verify_fully(&self, token: &str) -> Result<(ServiceIdentity, u64), AuthError> {
        let inner = &*self.inner;
        let header = peek_header(token)?;
        if header.alg != "RS256" {
            return Err(AuthError::AlgorithmNotAllowed(header.alg));
        }
        let key = inner.jwks.key(header.kid.as_deref()).await?;
        if key.alg != Algorithm::RS256 {
            return Err(AuthError::AlgorithmNotAllowed(header.alg));
        }
        let v = validation(Algorithm::RS256, GOOGLE_LEEWAY_SECS, &GOOGLE_ISSUERS, Some(&inner.audience));
        let claims = decode(token, &key.key, &v)?;
        let email = match claims.get("email") {
            Some(Value::String(e)) if !e.is_empty() => e.clone(),
            _ => return Err(AuthError::MissingClaim("email")),
        };
        // Google sends a JSON boolean; some older tokens carried the string "true".
        let verified = match claims.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        if !verified {
            return Err(AuthError::EmailNotVerified);
        }
        let allowed =
            inner.allowed_emails.is_empty() || inner.allowed_emails.iter().any(|a| a.eq_ignore_ascii_case(&email));
        if !allowed {
            tracing::warn!(%email, audience = %inner.audience, "OIDC caller not allowed");
            return Err(AuthError::Forbidden { email });
        }
        // `exp` is required by the validation, so it is there and numeric.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((ServiceIdentity { email }, exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_is_served_until_its_exp_and_not_after() {
        let mut v = Verified::default();
        v.insert([1; 32], "push@example.com".into(), 1_000, 900);
        assert_eq!(v.get(&[1; 32], 999).as_deref(), Some("push@example.com"));
        assert_eq!(v.get(&[1; 32], 1_000), None, "at its exp it must be checked again (and refused)");
        assert_eq!(v.get(&[2; 32], 999), None, "another token is checked");
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first_then_starts_over() {
        let mut v = Verified::default();
        for i in 0..MAX_VERIFIED_TOKENS {
            let exp = if i % 2 == 0 { 100 } else { 10_000 };
            v.insert([i as u8; 32], format!("sa{i}"), exp, 50);
        }
        assert_eq!(v.tokens.len(), MAX_VERIFIED_TOKENS);
        let mut new = [0u8; 32];
        new[0] = 1; // unlike every key above, whose bytes are all equal
        v.insert(new, "new".into(), 10_000, 200);
        assert_eq!(v.tokens.len(), MAX_VERIFIED_TOKENS / 2 + 1, "the expired half went");
        let mut full = Verified::default();
        for i in 0..MAX_VERIFIED_TOKENS {
            full.insert([i as u8; 32], format!("sa{i}"), 10_000, 50);
        }
        full.insert(new, "new".into(), 10_000, 200);
        assert_eq!(full.tokens.len(), 1, "none expired: it starts over rather than grow");
        assert_eq!(full.get(&new, 200).as_deref(), Some("new"));
    }
}

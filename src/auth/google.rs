//! Google OIDC tokens on `/push` and `/internal/*`: Pub/Sub push, Cloud Scheduler, dead-letter push.

use std::sync::Arc;

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
}

impl GoogleOidcVerifier {
    /// A verifier for one endpoint. `allowed_emails` empty means *any* Google-verified email is
    /// accepted: only safe when the audience alone is secret enough (e.g. local runs); in
    /// production list the push/scheduler service accounts. Emails compare case-insensitively.
    pub fn new(jwks: Arc<JwksCache>, audience: String, allowed_emails: Vec<String>) -> Self {
        if allowed_emails.is_empty() {
            tracing::warn!(%audience, "Google OIDC verifier accepts any verified email");
        }
        Self { inner: Arc::new(Inner { jwks, audience, allowed_emails }) }
    }

    /// Verifies the `Authorization: Bearer` token of a request (a push, a scheduler call).
    pub async fn verify_request(&self, headers: &http::HeaderMap) -> Result<ServiceIdentity, AuthError> {
        self.verify(super::bearer_token(headers)?).await
    }

    /// Verifies the token and returns its caller; [`AuthError::Forbidden`] (403) when the token
    /// is valid but its email is not allowed here. Never logs the token.
    pub async fn verify(&self, token: &str) -> Result<ServiceIdentity, AuthError> {
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
        Ok(ServiceIdentity { email })
    }
}

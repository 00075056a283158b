//! Bearer tokens of the public API: HS256 with a local secret, or RS256/ES256 from a JWKS.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwks::JwksCache;
use super::token::{decode, grants_admin, peek_header, subject, validation};
use super::{AuthConfigError, AuthError};

/// The claim that grants admin when none is configured: OAuth's `scope`.
pub const DEFAULT_ADMIN_CLAIM: &str = "scope";
/// The value of the admin claim that grants admin when none is configured.
pub const DEFAULT_ADMIN_VALUE: &str = "runq:admin";
/// Clock skew tolerated on `exp`/`nbf` when none is configured.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Who a verified user token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the owner of the jobs this caller submits and may see.
    pub sub: String,
    /// Whether the admin claim grants access to every job and the dashboard.
    pub admin: bool,
}

/// Settings for the public API's bearer tokens, filled from `RUNQ_AUTH_*`.
#[derive(Clone, PartialEq, Eq)]
pub struct UserAuthConfig {
    /// `RUNQ_AUTH_HS256_SECRET`: local tokens (`runq token`). Default none.
    pub hs256_secret: Option<String>,
    /// `RUNQ_AUTH_HS256_PREVIOUS_SECRET`: still accepted during a secret rotation. Default none.
    pub hs256_previous_secret: Option<String>,
    /// `RUNQ_AUTH_JWKS_URL`: the identity provider's key set (production). Default none.
    pub jwks_url: Option<String>,
    /// `RUNQ_AUTH_ISSUER`: required `iss`; mandatory with a JWKS. Default none.
    pub issuer: Option<String>,
    /// `RUNQ_AUTH_AUDIENCE`: required `aud`; mandatory with a JWKS. Default none.
    pub audience: Option<String>,
    /// `RUNQ_AUTH_ADMIN_CLAIM`: the claim that may grant admin. Default [`DEFAULT_ADMIN_CLAIM`].
    pub admin_claim: String,
    /// `RUNQ_AUTH_ADMIN_VALUE`: the value in that claim that grants admin. Default [`DEFAULT_ADMIN_VALUE`].
    pub admin_value: String,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds. Default [`DEFAULT_LEEWAY_SECS`].
    pub leeway_secs: u64,
}

impl Default for UserAuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            hs256_previous_secret: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            admin_claim: DEFAULT_ADMIN_CLAIM.to_owned(),
            admin_value: DEFAULT_ADMIN_VALUE.to_owned(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Secrets must not reach logs through `{:?}`.
impl std::fmt::Debug for UserAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "[redacted]");
        f.debug_struct("UserAuthConfig")
            .field("hs256_secret", &redact(&self.hs256_secret))
            .field("hs256_previous_secret", &redact(&self.hs256_previous_secret))
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("admin_claim", &self.admin_claim)
            .field("admin_value", &self.admin_value)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Verifies the public API's bearer tokens and says whose they are. Cheap to clone.
///
/// The algorithm is chosen by the key, never by the token: HS256 tokens are only checked
/// against the configured secrets, RS256/ES256 tokens only against JWKS keys of that type, and
/// everything else (`none`, HS384, PS256, ...) is refused. So an HS256 token "signed" with a
/// public key is refused when only a JWKS is configured.
#[derive(Clone)]
pub struct UserVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The current secret, then the previous one: rotation accepts both.
    hs256: Vec<DecodingKey>,
    /// The production key set, if configured.
    jwks: Option<Arc<JwksCache>>,
    /// Required `iss`, if configured.
    issuer: Option<String>,
    /// Required `aud`, if configured.
    audience: Option<String>,
    /// The claim that may grant admin.
    admin_claim: String,
    /// The value in it that grants admin.
    admin_value: String,
    /// Clock skew tolerated on `exp`/`nbf`.
    leeway_secs: u64,
}

impl UserVerifier {
    /// Checks the configuration: at least one key source; a JWKS needs both issuer and
    /// audience (else any token the provider signs for any app would be accepted); no empty
    /// secrets. Fetches nothing yet.
    pub fn new(cfg: UserAuthConfig, http: reqwest::Client) -> Result<Self, AuthConfigError> {
        let jwks = match &cfg.jwks_url {
            Some(url) => Some(Arc::new(JwksCache::new(url.clone(), http)?)),
            None => None,
        };
        Self::with_jwks(cfg, jwks)
    }

    /// Like [`UserVerifier::new`] but with a ready [`JwksCache`] (shared, or tuned for tests);
    /// `cfg.jwks_url` is ignored.
    pub fn with_jwks(cfg: UserAuthConfig, jwks: Option<Arc<JwksCache>>) -> Result<Self, AuthConfigError> {
        let non_empty = |s: &Option<String>, name| match s {
            Some(s) if s.is_empty() => Err(AuthConfigError::EmptySecret(name)),
            _ => Ok(()),
        };
        non_empty(&cfg.hs256_secret, "RUNQ_AUTH_HS256_SECRET")?;
        non_empty(&cfg.hs256_previous_secret, "RUNQ_AUTH_HS256_PREVIOUS_SECRET")?;
        if cfg.hs256_previous_secret.is_some() && cfg.hs256_secret.is_none() {
            return Err(AuthConfigError::PreviousWithoutCurrent);
        }
        if cfg.hs256_secret.is_none() && jwks.is_none() {
            return Err(AuthConfigError::NoKeySource);
        }
        let blank = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
        if jwks.is_some() && (blank(&cfg.issuer) || blank(&cfg.audience)) {
            return Err(AuthConfigError::JwksWithoutIssuerAndAudience);
        }
        if cfg.admin_claim.is_empty() || cfg.admin_value.is_empty() {
            return Err(AuthConfigError::EmptyAdminClaim);
        }
        let hs256 = [&cfg.hs256_secret, &cfg.hs256_previous_secret]
            .into_iter()
            .flatten()
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                hs256,
                jwks,
                issuer: cfg.issuer,
                audience: cfg.audience,
                admin_claim: cfg.admin_claim,
                admin_value: cfg.admin_value,
                leeway_secs: cfg.leeway_secs,
            }),
        })
    }

    /// Verifies signature, `exp` (+`nbf`), `iss`/`aud` when configured, and a non-empty `sub`;
    /// then reads the admin claim. Never logs the token.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let inner = &*self.inner;
        let header = peek_header(token)?;
        let issuers: Vec<&str> = inner.issuer.as_deref().into_iter().collect();
        let audience = inner.audience.as_deref();
        let claims = match header.alg.as_str() {
            "HS256" if !inner.hs256.is_empty() => {
                let v = validation(Algorithm::HS256, inner.leeway_secs, &issuers, audience);
                let mut result = Err(AuthError::BadSignature);
                // Current secret first; the previous one only when the signature didn't match.
                for key in &inner.hs256 {
                    result = decode(token, key, &v);
                    if !matches!(result, Err(AuthError::BadSignature)) {
                        break;
                    }
                }
                result?
            }
            "RS256" | "ES256" if inner.jwks.is_some() => {
                let jwks = inner.jwks.as_ref().expect("checked by the guard");
                let key = jwks.key(header.kid.as_deref()).await?;
                if alg_name(key.alg) != header.alg {
                    return Err(AuthError::AlgorithmNotAllowed(header.alg));
                }
                let v = validation(key.alg, inner.leeway_secs, &issuers, audience);
                decode(token, &key.key, &v)?
            }
            _ => return Err(AuthError::AlgorithmNotAllowed(header.alg)),
        };
        let sub = subject(&claims)?;
        let admin = grants_admin(claims.get(&inner.admin_claim), &inner.admin_value);
        Ok(Principal { sub, admin })
    }
}

/// The JOSE name of the algorithms a JWKS key may have.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // JwksCache only ever yields the two above.
        _ => "unsupported",
    }
}

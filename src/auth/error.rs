//! The errors of the auth layer: why a token was refused, and how that maps to HTTP.

use axum::http::StatusCode;

/// Why a bearer token (user JWT or Google OIDC token) was not accepted.
///
/// The `Display` text is for logs (it never contains the token); [`AuthError::detail`] is the
/// short text a client may see; [`AuthError::status`] is the HTTP status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no `Authorization` header, so the caller has not tried to authenticate.
    #[error("missing bearer token")]
    MissingToken,
    /// 401: the header is not `Bearer <token>`, or the token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// 401: `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// 401: `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// 401: the signature does not match the key (tampered, or signed by someone else).
    #[error("bad token signature")]
    BadSignature,
    /// 401: the header's `alg` is not one this verifier accepts for the key it names
    /// (`none`, HS256 against a JWKS-only verifier, RS256 naming an EC key, ...).
    #[error("token algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    /// 401: `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// 401: `aud` is not the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// 401: a claim this verifier requires (`exp`, `sub`, `iss`, `aud`, `email`) is absent or empty.
    #[error("token lacks required claim `{0}`")]
    MissingClaim(&'static str),
    /// 401: the token's `kid` is not in the JWKS, even after a refresh.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// 401: a Google OIDC token whose `email_verified` is not true: the email can't be trusted.
    #[error("token email not verified")]
    EmailNotVerified,
    /// 403: a valid token, but its caller is not one this endpoint accepts.
    #[error("caller {email} is not allowed")]
    Forbidden {
        /// The verified email that was refused (a service account, safe to log).
        email: String,
    },
    /// 503: the JWKS could not be fetched and no cached key applies; the caller should retry.
    #[error("JWKS unavailable: {0}")]
    JwksUnavailable(String),
    /// 500: minting a token failed (empty secret or subject); only [`super::mint_hs256`] returns it.
    #[error("cannot mint token: {0}")]
    Mint(&'static str),
}

impl AuthError {
    /// The HTTP status for this refusal: 401 for anything wrong with the token, 403 for a valid
    /// token of a caller that is not allowed, 503 when keys could not be fetched (so push
    /// senders retry instead of dropping the message), 500 for a local minting failure.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::JwksUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Mint(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A short message safe to send to the client: it says what is wrong with the token,
    /// but never echoes the token, key material, JWKS URLs or upstream errors.
    pub fn detail(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing bearer token",
            AuthError::Malformed(_) => "malformed bearer token",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::BadSignature => "invalid token signature",
            AuthError::AlgorithmNotAllowed(_) => "token algorithm not allowed",
            AuthError::WrongIssuer => "wrong token issuer",
            AuthError::WrongAudience => "wrong token audience",
            AuthError::MissingClaim(_) => "token lacks a required claim",
            AuthError::UnknownKey => "token signed by an unknown key",
            AuthError::EmailNotVerified => "token email not verified",
            AuthError::Forbidden { .. } => "caller not allowed",
            AuthError::JwksUnavailable(_) => "token keys temporarily unavailable",
            AuthError::Mint(_) => "cannot mint token",
        }
    }

    /// The `WWW-Authenticate` value to send with a 401 (RFC 6750 §3), `None` for other statuses.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            AuthError::MissingToken => Some(r#"Bearer realm="runq""#),
            _ if self.status() == StatusCode::UNAUTHORIZED => Some(r#"Bearer realm="runq", error="invalid_token""#),
            _ => None,
        }
    }
}

/// A verifier was configured in a way that can't be safe or can't work; raised at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// Neither an HS256 secret nor a JWKS URL: no token could ever verify.
    #[error("auth needs RUNQ_AUTH_HS256_SECRET or RUNQ_AUTH_JWKS_URL")]
    NoKeySource,
    /// A JWKS without both issuer and audience would accept any token its issuer signs for anyone.
    #[error("RUNQ_AUTH_JWKS_URL requires RUNQ_AUTH_ISSUER and RUNQ_AUTH_AUDIENCE")]
    JwksWithoutIssuerAndAudience,
    /// An empty secret (or previous secret) would make HS256 signatures forgeable.
    #[error("{0} is empty")]
    EmptySecret(&'static str),
    /// The previous secret is set without a current one: rotation needs a current secret.
    #[error("RUNQ_AUTH_HS256_PREVIOUS_SECRET is set without RUNQ_AUTH_HS256_SECRET")]
    PreviousWithoutCurrent,
    /// The JWKS URL does not parse, or is not http(s).
    #[error("invalid JWKS URL {url:?}: {reason}")]
    InvalidJwksUrl {
        /// The URL as configured.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The admin claim name or value is empty, which would make nobody (or everybody) admin.
    #[error("RUNQ_AUTH_ADMIN_CLAIM and RUNQ_AUTH_ADMIN_VALUE must not be empty")]
    EmptyAdminClaim,
}

/// Maps a `jsonwebtoken` failure to ours. Signature errors come before claim errors because
/// `jsonwebtoken::decode` checks the signature first.
pub(crate) fn from_jwt(err: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.into_kind() {
        K::InvalidSignature => AuthError::BadSignature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidAudience => AuthError::WrongAudience,
        K::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            "nbf" => "nbf",
            _ => "unknown",
        }),
        K::InvalidAlgorithm | K::MissingAlgorithm => AuthError::AlgorithmNotAllowed("mismatch".to_owned()),
        K::InvalidClaimFormat(_) => AuthError::Malformed("claim has the wrong type"),
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            // The key came from the JWKS and passed our parsing; a token that trips this is
            // refused as unverifiable rather than blamed on the issuer.
            AuthError::BadSignature
        }
        _ => AuthError::Malformed("not a valid JWT"),
    }
}

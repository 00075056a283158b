//! Pieces shared by both verifiers: reading the bearer header, peeking at a JWT header
//! without trusting it, decoding with a known key, and minting local HS256 tokens.

use std::time::Duration;

use axum::http::{HeaderMap, header::AUTHORIZATION};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::AuthError;

/// Tokens longer than this are refused before any parsing: a JWT for this API is well under
/// 2 KiB, and a huge header value should not cost base64 and JSON work.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Extracts the token from `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 7235). A missing header is [`AuthError::MissingToken`] so the API can tell "not
/// logged in" from "sent garbage"; several `Authorization` headers are refused as ambiguous.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed("Authorization header is not ASCII"))?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed("Authorization is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("Authorization scheme is not Bearer"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("empty bearer token"));
    }
    Ok(token)
}

/// The parts of an unverified JWT header that pick the key. Only `alg` and `kid` are read:
/// parsing it ourselves (not with `jsonwebtoken::decode_header`) lets `alg: none` and other
/// unknown algorithms be reported as [`AuthError::AlgorithmNotAllowed`] instead of "malformed".
#[derive(Debug)]
pub(crate) struct UnverifiedHeader {
    /// The algorithm the token claims; only ever compared against what the key allows.
    pub alg: String,
    /// The key id, used to look the key up in a JWKS.
    pub kid: Option<String>,
}

/// Reads the header of a compact JWS without verifying anything.
pub(crate) fn peek_header(token: &str) -> Result<UnverifiedHeader, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed("empty header or payload"));
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::Malformed("header is not base64url"))?;
    #[derive(serde::Deserialize)]
    struct Raw {
        alg: String,
        kid: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("header is not a JWT header"))?;
    Ok(UnverifiedHeader { alg: raw.alg, kid: raw.kid })
}

/// Claim rules common to every verification: `exp` required (with leeway), `nbf` honoured when
/// present, `iss`/`aud` required and checked when given, ignored when not.
pub(crate) fn validation(alg: Algorithm, leeway_secs: u64, issuers: &[&str], audience: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway_secs;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if !issuers.is_empty() {
        v.set_issuer(issuers);
        required.push("iss");
    }
    match audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // jsonwebtoken refuses any `aud` when none is expected; with no audience configured
        // (local HS256) the claim is simply not checked.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Verifies signature and standard claims, returning the claims as a JSON object.
pub(crate) fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Map<String, Value>, AuthError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(super::error::from_jwt)
}

/// The `sub` claim, required to be a non-empty string (it owns jobs, so "" must not be an owner).
pub(crate) fn subject(claims: &Map<String, Value>) -> Result<String, AuthError> {
    match claims.get("sub") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(AuthError::MissingClaim("sub")),
    }
}

/// Whether `value` (the admin claim) grants admin: a space-separated string like OAuth `scope`
/// containing `admin_value` as a whole word, an array of strings containing it, or `true`.
pub(crate) fn grants_admin(value: Option<&Value>, admin_value: &str) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.split_whitespace().any(|w| w == admin_value),
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(admin_value)),
        _ => false,
    }
}

/// Mints a local HS256 token (for `runq token --sub alice --admin --ttl 1h`), readable by a
/// [`super::UserVerifier`] configured with the same secret, admin claim, issuer and audience.
/// An admin token carries `admin_claim: admin_value` (a one-word scope string); a non-admin
/// token omits the claim.
#[allow(clippy::too_many_arguments)]
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    admin: bool,
    ttl: Duration,
    admin_claim: &str,
    admin_value: &str,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Mint("empty secret"));
    }
    if sub.trim().is_empty() {
        return Err(AuthError::Mint("empty subject"));
    }
    if admin && (admin_claim.is_empty() || admin_value.is_empty()) {
        return Err(AuthError::Mint("empty admin claim"));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = audience {
        claims.insert("aud".into(), aud.into());
    }
    if admin {
        claims.insert(admin_claim.into(), admin_value.into());
    }
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|_| AuthError::Mint("signing failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bEaReR  abc.def.ghi "));
        assert_eq!(bearer_token(&h), Ok("abc.def.ghi"));
    }

    #[test]
    fn bearer_errors() {
        let h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(AuthError::MissingToken));
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "abc.def.ghi"] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            assert!(matches!(bearer_token(&h), Err(AuthError::Malformed(_))), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a.b.c"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer d.e.f"));
        assert!(matches!(bearer_token(&h), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn header_peek() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let got = peek_header(&format!("{h}.e30.")).unwrap();
        assert_eq!((got.alg.as_str(), got.kid.as_deref()), ("none", Some("k1")));
        for bad in ["", "a.b", "a.b.c.d", ".e30.x", "!!!.e30.x", "e30.e30.x"] {
            assert!(matches!(peek_header(bad), Err(AuthError::Malformed(_))), "{bad}");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(peek_header(&long), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn admin_claim_shapes() {
        let admin = "runq:admin";
        assert!(grants_admin(Some(&json!("read runq:admin")), admin));
        assert!(grants_admin(Some(&json!(["x", "runq:admin"])), admin));
        assert!(grants_admin(Some(&json!(true)), admin));
        assert!(!grants_admin(Some(&json!(false)), admin));
        assert!(!grants_admin(Some(&json!("runq:administrator")), admin));
        assert!(!grants_admin(Some(&json!(["runq:admin x"])), admin));
        assert!(!grants_admin(Some(&json!(1)), admin));
        assert!(!grants_admin(None, admin));
    }

    #[test]
    fn subject_must_be_non_empty_string() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(subject(&c(json!({"sub": "alice"}))), Ok("alice".into()));
        for bad in [json!({}), json!({"sub": ""}), json!({"sub": "  "}), json!({"sub": 7})] {
            assert_eq!(subject(&c(bad)), Err(AuthError::MissingClaim("sub")));
        }
    }

    #[test]
    fn mint_refuses_empty_inputs() {
        let ttl = Duration::from_secs(60);
        let m = |secret, sub| mint_hs256(secret, sub, false, ttl, "scope", "a", None, None);
        assert_eq!(m("", "alice"), Err(AuthError::Mint("empty secret")));
        assert_eq!(m("s", " "), Err(AuthError::Mint("empty subject")));
        assert!(m("s", "alice").is_ok());
    }
}

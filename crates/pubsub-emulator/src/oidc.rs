//! OIDC for push: the emulator's RSA key, its JWKS (served at `/oauth2/v3/certs`) and the
//! RS256 ID tokens put in push requests, cached per subscription, audience and account
//! until close to expiry as Google does, so signing doesn't dominate push throughput.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use sha2::Digest;

/// Google's issuer; runq's verifier accepts it (and `accounts.google.com`).
pub(crate) const ISSUER: &str = "https://accounts.google.com";
/// Lifetime of a push token, as Google's.
const TOKEN_LIFETIME_SECS: i64 = 3600;
/// A cached token is replaced when it has less than this left.
const REFRESH_MARGIN_SECS: i64 = 300;

/// Claims of a push token, as Google sends them.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    azp: &'a str,
    sub: &'a str,
    email: &'a str,
    email_verified: bool,
    iat: i64,
    exp: i64,
}

/// rsa 0.9 wants a rand_core 0.6 RNG; this feeds it from `rand` 0.9's OS-seeded CSPRNG.
struct Rng06;

impl rsa::rand_core::RngCore for Rng06 {
    fn next_u32(&mut self) -> u32 {
        rand::random()
    }
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        rand::fill(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for Rng06 {}

/// The signing key and token cache.
pub(crate) struct Signer {
    kid: String,
    key: EncodingKey,
    /// The private key, PKCS#1 DER (kept by `--state-file`).
    der: Vec<u8>,
    /// The JWKS document, built once.
    jwks: serde_json::Value,
    /// (subscription, audience, email) → (token, exp).
    cache: Mutex<HashMap<CacheKey, (String, i64)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Who a cached token is for: subscription, audience, service account.
type CacheKey = (String, String, String);

static SHARED: OnceLock<Arc<Signer>> = OnceLock::new();

impl Signer {
    /// The process's signer, generating its 2048-bit key on first use (off the async
    /// threads). Emulators in one process share it; a restart makes a new key.
    pub(crate) async fn shared() -> std::io::Result<Arc<Signer>> {
        if let Some(s) = SHARED.get() {
            return Ok(s.clone());
        }
        let s = tokio::task::spawn_blocking(Signer::generate).await.map_err(std::io::Error::other)??;
        Ok(SHARED.get_or_init(|| Arc::new(s)).clone())
    }

    fn generate() -> std::io::Result<Signer> {
        let private = rsa::RsaPrivateKey::new(&mut Rng06, 2048).map_err(std::io::Error::other)?;
        let der = private.to_pkcs1_der().map_err(std::io::Error::other)?;
        Signer::from_der(der.as_bytes())
    }

    /// A signer with a saved key (PKCS#1 DER), as `--state-file` restores it.
    pub(crate) fn from_der(der: &[u8]) -> std::io::Result<Signer> {
        let private = rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(std::io::Error::other)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = b64.encode(private.n().to_bytes_be());
        let e = b64.encode(private.e().to_bytes_be());
        let kid = hex(&sha2::Sha256::digest(n.as_bytes())[..10]);
        let jwks = serde_json::json!({
            "keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": n, "e": e}]
        });
        Ok(Signer {
            kid,
            key: EncodingKey::from_rsa_der(der),
            der: der.to_vec(),
            jwks,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The private key, PKCS#1 DER.
    pub(crate) fn der(&self) -> &[u8] {
        &self.der
    }

    pub(crate) fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// A token for a push to `subscription` as `email` with audience `aud`.
    pub(crate) fn token(
        &self,
        subscription: &str,
        email: &str,
        aud: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let key = (subscription.to_string(), aud.to_string(), email.to_string());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, exp)) = cache.get(&key)
            && *exp - now > REFRESH_MARGIN_SECS
        {
            return Ok(t.clone());
        }
        let sub = account_id(email);
        let claims = Claims {
            iss: ISSUER,
            aud,
            azp: &sub,
            sub: &sub,
            email,
            email_verified: true,
            iat: now,
            exp: now + TOKEN_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        cache.insert(key, (token.clone(), claims.exp));
        Ok(token)
    }
}

/// A stable 21-digit numeric id for a service account, like Google's `sub`/`azp`.
fn account_id(email: &str) -> String {
    let d = sha2::Sha256::digest(email.as_bytes());
    let n = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
    format!("1{:020}", n)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

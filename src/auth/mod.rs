//! Auth: who is calling. Owns bearer-JWT verification for the public API (HS256 secret or
//! RS256/ES256 from a JWKS, admin claim), Google OIDC verification for `/push` and
//! `/internal/*`, the shared JWKS cache, and minting local tokens for `runq token`.
//!
//! # Layout
//! - `error`: [`AuthError`] (why a token was refused, its HTTP status), [`AuthConfigError`].
//! - `token`: the `Authorization` header, unverified header peeking, claim rules, minting.
//! - `jwks`: [`JwksCache`], the key set fetched over HTTP, cached and rate-limited.
//! - `user`: [`UserVerifier`] and [`Principal`] for `/jobs`.
//! - `google`: [`GoogleOidcVerifier`] and [`ServiceIdentity`] for push and internal routes.
//!
//! Crypto comes from `jsonwebtoken`'s `rust_crypto` feature: with it as the only provider
//! feature enabled, jsonwebtoken picks its RustCrypto provider by itself (no
//! `CryptoProvider::install_default` call needed). Tokens are never logged.

mod error;
mod google;
mod jwks;
mod token;
mod user;

pub use error::{AuthConfigError, AuthError};
pub use google::{
    GOOGLE_ISSUERS, GOOGLE_JWKS_URL, GOOGLE_LEEWAY_SECS, GoogleCallers, GoogleOidcVerifier, ServiceIdentity,
};
pub use jwks::{DEFAULT_JWKS_MAX_AGE, DEFAULT_JWKS_MIN_REFRESH, JWKS_FETCH_TIMEOUT, JwksCache, MAX_JWKS_MAX_AGE};
pub use token::{MAX_TOKEN_LEN, bearer_token, mint_hs256};
pub use user::{
    DEFAULT_ADMIN_CLAIM, DEFAULT_ADMIN_VALUE, DEFAULT_LEEWAY_SECS, Principal, UserAuthConfig, UserVerifier,
};

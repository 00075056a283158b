//! Auth: user JWTs and Google OIDC.

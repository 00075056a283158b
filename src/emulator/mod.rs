//! The Pub/Sub emulator: REST/JSON over HTTP/1.1 and gRPC over HTTP/2 on one port,
//! push delivery with OIDC tokens signed by its own key, JWKS at `/oauth2/v3/certs`.
//! Used by `runq emulator`, `runq dev` and the tests.

//! Auth: user bearer tokens (HS256 and JWKS), Google OIDC, and the JWKS cache, over real
//! sockets: a small axum JWKS server whose key set each test swaps and whose fetches it counts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use runq::auth::{
    AuthConfigError, AuthError, GoogleOidcVerifier, JwksCache, Principal, ServiceIdentity, UserAuthConfig,
    UserVerifier, mint_hs256,
};
use serde_json::{Value, json};

const SECRET: &str = "current-secret-at-least-32-bytes-long!!";
const PREVIOUS: &str = "previous-secret-at-least-32-bytes-long!";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "runq-api";
const PUSH_AUD: &str = "https://runq.example/push";
const PUSH_SA: &str = "push@proj.iam.gserviceaccount.com";

/// A P-256 key in PKCS#8 (generated once with `openssl genpkey`); test-only.
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgT9SQsIHhiu7koOpW
62kz2p2MqCtticLCrDlYpE3zb3ShRANCAAT//mIojmvOMoVp9qEN4F9a3dqUqyi0
bfspNvhNaaiJwx5R5vbMWElmwbYKuA5Fir58t2TnYJZosPgKeXi85F3R
-----END PRIVATE KEY-----
";

// ---------- keys and tokens ----------

/// A signing key, its algorithm and kid, and its public JWK as the server publishes it.
struct TestKey {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn new(alg: Algorithm, kid: &str, enc: EncodingKey) -> Self {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Self { alg, kid: kid.to_owned(), enc, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

/// rand 0.9's thread rng behind the rand_core 0.6 traits that `rsa` 0.9 wants.
struct Rng06;
impl rsa::rand_core::RngCore for Rng06 {
    fn next_u32(&mut self) -> u32 {
        rand::random()
    }
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::fill(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        rand::fill(dest);
        Ok(())
    }
}
impl rsa::rand_core::CryptoRng for Rng06 {}

fn rsa_key(kid: &str) -> TestKey {
    let private = rsa::RsaPrivateKey::new(&mut Rng06, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    TestKey::new(Algorithm::RS256, kid, EncodingKey::from_rsa_der(der.as_bytes()))
}

fn ec_key(kid: &str) -> TestKey {
    TestKey::new(Algorithm::ES256, kid, EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap())
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Valid user claims for the JWKS verifier; tests edit them.
fn user_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now()})
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

// ---------- the JWKS server ----------

#[derive(Clone, Default)]
struct ServerState {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    cache_control: Arc<Mutex<Option<&'static str>>>,
    failing: Arc<AtomicBool>,
}

struct JwksServer {
    url: String,
    state: ServerState,
}

impl JwksServer {
    async fn start(keys: &[&TestKey]) -> Self {
        let state = ServerState::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/jwks", axum::routing::get(serve_jwks)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let server = Self { url, state };
        server.set_keys(keys);
        server
    }

    fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_cache_control(&self, value: &'static str) {
        *self.state.cache_control.lock().unwrap() = Some(value);
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn cache(&self, min_refresh: Duration) -> Arc<JwksCache> {
        let cache = JwksCache::new(self.url.clone(), reqwest::Client::new()).unwrap();
        Arc::new(cache.with_min_refresh(min_refresh))
    }
}

async fn serve_jwks(State(s): State<ServerState>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = s.keys.lock().unwrap().clone();
    let mut resp = axum::Json(json!({ "keys": keys })).into_response();
    if let Some(cc) = *s.cache_control.lock().unwrap() {
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    }
    resp
}

// ---------- verifiers ----------

fn hs256_verifier(previous: Option<&str>) -> UserVerifier {
    UserVerifier::new(
        UserAuthConfig {
            hs256_secret: Some(SECRET.into()),
            hs256_previous_secret: previous.map(Into::into),
            ..UserAuthConfig::default()
        },
        reqwest::Client::new(),
    )
    .unwrap()
}

fn jwks_verifier(cache: Arc<JwksCache>) -> UserVerifier {
    let cfg =
        UserAuthConfig { issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..UserAuthConfig::default() };
    UserVerifier::with_jwks(cfg, Some(cache)).unwrap()
}

fn alice(admin: bool) -> Principal {
    Principal { sub: "alice".into(), admin }
}

// ---------- HS256 ----------

#[tokio::test]
async fn hs256_minted_token_verifies() {
    let v = hs256_verifier(None);
    let ttl = Duration::from_secs(3600);
    let t = mint_hs256(SECRET, "alice", false, ttl, "scope", "runq:admin", None, None).unwrap();
    assert_eq!(v.verify(&t).await, Ok(alice(false)));
    let t = mint_hs256(SECRET, "alice", true, ttl, "scope", "runq:admin", None, None).unwrap();
    assert_eq!(v.verify(&t).await, Ok(alice(true)));
}

#[tokio::test]
async fn hs256_with_issuer_and_audience_checks_both() {
    let cfg = UserAuthConfig {
        hs256_secret: Some(SECRET.into()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..UserAuthConfig::default()
    };
    let v = UserVerifier::new(cfg, reqwest::Client::new()).unwrap();
    let ttl = Duration::from_secs(60);
    let mint = |iss, aud| mint_hs256(SECRET, "alice", false, ttl, "scope", "x", iss, aud).unwrap();
    assert_eq!(v.verify(&mint(Some(ISSUER), Some(AUDIENCE))).await, Ok(alice(false)));
    assert_eq!(v.verify(&mint(Some(ISSUER), Some("other"))).await, Err(AuthError::WrongAudience));
    assert_eq!(v.verify(&mint(Some("https://evil"), Some(AUDIENCE))).await, Err(AuthError::WrongIssuer));
    assert_eq!(v.verify(&mint(None, Some(AUDIENCE))).await, Err(AuthError::MissingClaim("iss")));
    assert_eq!(v.verify(&mint(Some(ISSUER), None)).await, Err(AuthError::MissingClaim("aud")));
}

#[tokio::test]
async fn hs256_expired_token_is_refused_beyond_leeway() {
    let v = hs256_verifier(None);
    let mut c = json!({"sub": "alice", "exp": now() - 120});
    let err = v.verify(&hs256(SECRET, &c)).await.unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(err.detail(), "token expired");
    // Within the default 30 s leeway a just-expired token still passes (clock skew).
    c["exp"] = (now() - 5).into();
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Ok(alice(false)));
    // `nbf` in the future is refused too.
    let c = json!({"sub": "alice", "exp": now() + 300, "nbf": now() + 120});
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Err(AuthError::NotYetValid));
}

#[tokio::test]
async fn exp_and_sub_are_required() {
    let v = hs256_verifier(None);
    let no_exp = json!({"sub": "alice"});
    assert_eq!(v.verify(&hs256(SECRET, &no_exp)).await, Err(AuthError::MissingClaim("exp")));
    for c in [json!({"exp": now() + 60}), json!({"exp": now() + 60, "sub": ""})] {
        assert_eq!(v.verify(&hs256(SECRET, &c)).await, Err(AuthError::MissingClaim("sub")));
    }
}

#[tokio::test]
async fn wrong_or_tampered_signature_is_refused() {
    let v = hs256_verifier(None);
    let c = json!({"sub": "alice", "exp": now() + 60});
    let forged = hs256("another-secret-another-secret-another", &c);
    assert_eq!(v.verify(&forged).await, Err(AuthError::BadSignature));

    // Same signature, payload swapped for an admin one.
    let good = hs256(SECRET, &c);
    let sig = good.rsplit('.').next().unwrap();
    let head = good.split('.').next().unwrap();
    let evil = json!({"sub": "alice", "exp": now() + 60, "scope": "runq:admin"});
    let tampered = format!("{head}.{}.{sig}", b64(&evil));
    assert_eq!(v.verify(&tampered).await, Err(AuthError::BadSignature));

    for junk in ["", "abc", "a.b.c", "a.b.c.d"] {
        assert!(matches!(v.verify(junk).await, Err(AuthError::Malformed(_))), "{junk:?}");
    }
}

#[tokio::test]
async fn previous_secret_is_accepted_and_unrelated_refused() {
    let v = hs256_verifier(Some(PREVIOUS));
    let c = json!({"sub": "alice", "exp": now() + 60});
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Ok(alice(false)));
    assert_eq!(v.verify(&hs256(PREVIOUS, &c)).await, Ok(alice(false)));
    let unrelated = hs256("unrelated-secret-unrelated-secret-xx", &c);
    assert_eq!(v.verify(&unrelated).await, Err(AuthError::BadSignature));
    // Claims are still checked for a token under the previous secret.
    let expired = json!({"sub": "alice", "exp": now() - 300});
    assert_eq!(v.verify(&hs256(PREVIOUS, &expired)).await, Err(AuthError::Expired));
    // Without rotation configured, the previous secret is just a wrong key.
    let strict = hs256_verifier(None);
    assert_eq!(strict.verify(&hs256(PREVIOUS, &c)).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn alg_none_is_refused_by_every_verifier() {
    let claims = json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60,
                        "scope": "runq:admin"});
    let server = JwksServer::start(&[]).await;
    let jwks = jwks_verifier(server.cache(Duration::ZERO));
    let hs = hs256_verifier(None);
    for alg in ["none", "None", "NONE"] {
        let head = b64(&json!({"alg": alg, "typ": "JWT"}));
        let body = b64(&claims);
        for token in [format!("{head}.{body}."), format!("{head}.{body}.c2ln")] {
            let want = Err(AuthError::AlgorithmNotAllowed(alg.into()));
            assert_eq!(hs.verify(&token).await, want);
            assert_eq!(jwks.verify(&token).await, want);
        }
    }
    assert_eq!(server.fetches(), 0, "refused before looking for a key");
}

#[tokio::test]
async fn hs256_token_is_refused_by_a_jwks_only_verifier() {
    let key = rsa_key("rsa-1");
    let server = JwksServer::start(&[&key]).await;
    let v = jwks_verifier(server.cache(Duration::ZERO));
    // The classic confusion attack: HMAC keyed with the published public key, naming its kid.
    let public = serde_json::to_string(&key.jwk).unwrap();
    let n = key.jwk["n"].as_str().unwrap();
    for secret in [public.as_str(), n, SECRET] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(key.kid.clone());
        let enc = EncodingKey::from_secret(secret.as_bytes());
        let token = jsonwebtoken::encode(&h, &user_claims("alice"), &enc).unwrap();
        assert_eq!(v.verify(&token).await, Err(AuthError::AlgorithmNotAllowed("HS256".into())));
    }
    // Other algorithms of a supported family are not accepted either.
    let mut h = Header::new(Algorithm::RS512);
    h.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&h, &user_claims("alice"), &key.enc).unwrap();
    assert_eq!(v.verify(&token).await, Err(AuthError::AlgorithmNotAllowed("RS512".into())));
    assert_eq!(server.fetches(), 0);
}

// ---------- JWKS ----------

#[tokio::test]
async fn rs256_and_es256_verify_via_jwks() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let server = JwksServer::start(&[&rsa, &ec]).await;
    let v = jwks_verifier(server.cache(Duration::from_secs(60)));
    assert_eq!(v.verify(&rsa.sign(&user_claims("alice"))).await, Ok(alice(false)));
    assert_eq!(v.verify(&ec.sign(&user_claims("alice"))).await, Ok(alice(false)));
    assert_eq!(server.fetches(), 1, "the key set is cached");

    let mut c = user_claims("alice");
    c["aud"] = "other-api".into();
    assert_eq!(v.verify(&rsa.sign(&c)).await, Err(AuthError::WrongAudience));
    let mut c = user_claims("alice");
    c["iss"] = "https://other-issuer".into();
    assert_eq!(v.verify(&ec.sign(&c)).await, Err(AuthError::WrongIssuer));
    let mut c = user_claims("alice");
    c["exp"] = (now() - 600).into();
    assert_eq!(v.verify(&rsa.sign(&c)).await, Err(AuthError::Expired));
    let mut c = user_claims("alice");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(v.verify(&rsa.sign(&c)).await, Err(AuthError::MissingClaim("aud")));

    // A key pair the issuer never published, reusing a published kid.
    let impostor = rsa_key("rsa-1");
    assert_eq!(v.verify(&impostor.sign(&user_claims("alice"))).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn the_key_not_the_header_chooses_the_algorithm() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let server = JwksServer::start(&[&rsa, &ec]).await;
    let v = jwks_verifier(server.cache(Duration::from_secs(60)));
    // An RS256 token naming the EC key, and an ES256 token naming the RSA key.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec-1".into());
    let token = jsonwebtoken::encode(&h, &user_claims("alice"), &rsa.enc).unwrap();
    assert_eq!(v.verify(&token).await, Err(AuthError::AlgorithmNotAllowed("RS256".into())));
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&h, &user_claims("alice"), &ec.enc).unwrap();
    assert_eq!(v.verify(&token).await, Err(AuthError::AlgorithmNotAllowed("ES256".into())));
}

#[tokio::test]
async fn key_rotation_refetches_once_and_drops_removed_keys() {
    let (old, new) = (rsa_key("2024-old"), rsa_key("2025-new"));
    let server = JwksServer::start(&[&old]).await;
    let v = jwks_verifier(server.cache(Duration::ZERO));
    let old_token = old.sign(&user_claims("alice"));
    assert_eq!(v.verify(&old_token).await, Ok(alice(false)));
    assert_eq!(server.fetches(), 1);

    // The issuer rotates: serves only the new key.
    server.set_keys(&[&new]);
    assert_eq!(v.verify(&new.sign(&user_claims("bob"))).await.map(|p| p.sub), Ok("bob".into()));
    assert_eq!(server.fetches(), 2, "one refetch for the new kid");
    assert_eq!(v.verify(&new.sign(&user_claims("bob"))).await.map(|p| p.sub), Ok("bob".into()));
    assert_eq!(server.fetches(), 2, "then served from the cache");

    // The old key is gone from the refreshed set.
    assert_eq!(v.verify(&old_token).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn stale_key_set_is_refetched_and_a_removed_key_refused() {
    let (a, b) = (rsa_key("a"), ec_key("b"));
    let server = JwksServer::start(&[&a, &b]).await;
    server.set_cache_control("public, max-age=0");
    let v = jwks_verifier(server.cache(Duration::ZERO));
    let token_a = a.sign(&user_claims("alice"));
    assert_eq!(v.verify(&token_a).await, Ok(alice(false)));
    // Still published but the cache is stale: refetched, key still there.
    assert_eq!(v.verify(&token_a).await, Ok(alice(false)));
    assert_eq!(server.fetches(), 2);
    server.set_keys(&[&b]);
    assert_eq!(v.verify(&token_a).await, Err(AuthError::UnknownKey));
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    let key = rsa_key("real");
    let server = JwksServer::start(&[&key]).await;
    let v = jwks_verifier(server.cache(Duration::from_secs(60)));
    let floods = (0..50).map(|i| {
        let v = v.clone();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("made-up-{i}"));
        let token = jsonwebtoken::encode(&h, &user_claims("mallory"), &key.enc).unwrap();
        async move { v.verify(&token).await }
    });
    let results = futures::future::join_all(floods).await;
    assert!(results.iter().all(|r| *r == Err(AuthError::UnknownKey)), "{results:?}");
    assert_eq!(server.fetches(), 1, "one fetch for fifty unknown kids");
    // The real key still verifies from the cache.
    assert_eq!(v.verify(&key.sign(&user_claims("alice"))).await, Ok(alice(false)));
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn jwks_down_is_a_503_class_error() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let cache = Arc::new(JwksCache::new(url, reqwest::Client::new()).unwrap());
    let v = jwks_verifier(cache);
    let key = rsa_key("k");
    let err = v.verify(&key.sign(&user_claims("alice"))).await.unwrap_err();
    assert!(matches!(err, AuthError::JwksUnavailable(_)), "{err:?}");
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.detail(), "token keys temporarily unavailable");
    // Within the rate-limit window it stays unavailable without retrying.
    let err = v.verify(&key.sign(&user_claims("alice"))).await.unwrap_err();
    assert!(matches!(err, AuthError::JwksUnavailable(_)), "{err:?}");
}

#[tokio::test]
async fn failing_jwks_keeps_serving_cached_keys() {
    let key = rsa_key("k");
    let server = JwksServer::start(&[&key]).await;
    server.set_cache_control("max-age=0");
    let v = jwks_verifier(server.cache(Duration::ZERO));
    let token = key.sign(&user_claims("alice"));
    assert_eq!(v.verify(&token).await, Ok(alice(false)));
    server.set_failing(true);
    // Stale, refetch fails (HTTP 500): the cached key still verifies.
    assert_eq!(v.verify(&token).await, Ok(alice(false)));
    assert_eq!(server.fetches(), 2);
    // But a kid we have never seen can't be judged: 503, not 401.
    let other = rsa_key("other");
    let err = v.verify(&other.sign(&user_claims("alice"))).await.unwrap_err();
    assert!(matches!(err, AuthError::JwksUnavailable(_)), "{err:?}");
}

// ---------- admin claim ----------

#[tokio::test]
async fn admin_claim_variants() {
    let v = hs256_verifier(None);
    let cases = [
        (json!("runq:admin"), true),
        (json!("jobs:read runq:admin jobs:write"), true),
        (json!(["jobs:read", "runq:admin"]), true),
        (json!(true), true),
        (json!(false), false),
        (json!("jobs:read"), false),
        (json!("runq:administrator"), false),
        (json!(["jobs:read runq:admin"]), false),
        (json!({"runq:admin": true}), false),
    ];
    for (scope, admin) in cases {
        let c = json!({"sub": "alice", "exp": now() + 60, "scope": scope});
        assert_eq!(v.verify(&hs256(SECRET, &c)).await, Ok(alice(admin)), "{scope}");
    }

    // A custom claim and value.
    let cfg = UserAuthConfig {
        hs256_secret: Some(SECRET.into()),
        admin_claim: "roles".into(),
        admin_value: "ops".into(),
        ..UserAuthConfig::default()
    };
    let v = UserVerifier::new(cfg, reqwest::Client::new()).unwrap();
    let c = json!({"sub": "alice", "exp": now() + 60, "roles": ["dev", "ops"]});
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Ok(alice(true)));
    let c = json!({"sub": "alice", "exp": now() + 60, "scope": "runq:admin"});
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Ok(alice(false)));
    let ttl = Duration::from_secs(60);
    let t = mint_hs256(SECRET, "alice", true, ttl, "roles", "ops", None, None).unwrap();
    assert_eq!(v.verify(&t).await, Ok(alice(true)));
}

// ---------- configuration ----------

#[test]
fn configuration_errors() {
    let http = reqwest::Client::new;
    let base = UserAuthConfig::default;
    let err = |cfg| UserVerifier::new(cfg, http()).err();
    assert_eq!(err(base()), Some(AuthConfigError::NoKeySource));
    let jwks = UserAuthConfig { jwks_url: Some("https://idp.example/jwks".into()), ..base() };
    assert_eq!(err(jwks.clone()), Some(AuthConfigError::JwksWithoutIssuerAndAudience));
    let with_iss = UserAuthConfig { issuer: Some(ISSUER.into()), ..jwks.clone() };
    assert_eq!(err(with_iss.clone()), Some(AuthConfigError::JwksWithoutIssuerAndAudience));
    let ok = UserAuthConfig { audience: Some(AUDIENCE.into()), ..with_iss };
    assert_eq!(err(ok.clone()), None);
    let bad_url = UserAuthConfig { jwks_url: Some("ftp://idp/jwks".into()), ..ok };
    assert!(matches!(err(bad_url), Some(AuthConfigError::InvalidJwksUrl { .. })));
    let empty = UserAuthConfig { hs256_secret: Some(String::new()), ..base() };
    assert_eq!(err(empty), Some(AuthConfigError::EmptySecret("RUNQ_AUTH_HS256_SECRET")));
    let prev_only = UserAuthConfig { hs256_previous_secret: Some(PREVIOUS.into()), ..base() };
    assert_eq!(err(prev_only), Some(AuthConfigError::PreviousWithoutCurrent));
    let secret = UserAuthConfig { hs256_secret: Some(SECRET.into()), ..base() };
    assert!(!format!("{secret:?}").contains(SECRET), "Debug redacts secrets");
}

// ---------- Google OIDC ----------

fn google_claims(iss: &str, email: &str) -> Value {
    json!({"iss": iss, "aud": PUSH_AUD, "exp": now() + 300, "iat": now(),
           "sub": "1234567890", "email": email, "email_verified": true})
}

async fn google_setup(allowed: Vec<String>) -> (JwksServer, TestKey, GoogleOidcVerifier) {
    let key = rsa_key("google-1");
    let server = JwksServer::start(&[&key]).await;
    let v = GoogleOidcVerifier::new(server.cache(Duration::from_secs(60)), PUSH_AUD.into(), allowed);
    (server, key, v)
}

fn push_identity() -> ServiceIdentity {
    ServiceIdentity { email: PUSH_SA.into() }
}

#[tokio::test]
async fn google_oidc_accepts_both_issuer_spellings() {
    let (_server, key, v) = google_setup(vec![PUSH_SA.into()]).await;
    for iss in ["https://accounts.google.com", "accounts.google.com"] {
        assert_eq!(v.verify(&key.sign(&google_claims(iss, PUSH_SA))).await, Ok(push_identity()));
    }
    let c = google_claims("https://accounts.google.evil", PUSH_SA);
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::WrongIssuer));
    let mut c = google_claims("accounts.google.com", PUSH_SA);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::MissingClaim("iss")));
}

#[tokio::test]
async fn google_oidc_remembers_an_accepted_token_and_checks_every_other_one() {
    let (_server, key, v) = google_setup(vec![PUSH_SA.into()]).await;
    let token = key.sign(&google_claims("accounts.google.com", PUSH_SA));
    assert_eq!(v.verify(&token).await, Ok(push_identity()));
    assert_eq!(v.verify(&token).await, Ok(push_identity()), "the same token again");
    assert_eq!(v.remembered_tokens(), 1);
    // One changed byte of the signature is another token: checked in full, and refused.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(v.verify(&forged).await.is_err(), "a forged copy of a remembered token");
    // Refusals aren't remembered: a wrong email is refused every time.
    let intruder = key.sign(&google_claims("accounts.google.com", "other@proj.iam.gserviceaccount.com"));
    for _ in 0..2 {
        assert!(matches!(v.verify(&intruder).await, Err(AuthError::Forbidden { .. })));
    }
    assert_eq!(v.remembered_tokens(), 1);
}

#[tokio::test]
async fn google_oidc_refuses_unverified_email() {
    let (_server, key, v) = google_setup(vec![PUSH_SA.into()]).await;
    for verified in [json!(false), json!("false"), Value::Null] {
        let mut c = google_claims("https://accounts.google.com", PUSH_SA);
        c["email_verified"] = verified;
        let err = v.verify(&key.sign(&c)).await.unwrap_err();
        assert_eq!(err, AuthError::EmailNotVerified);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }
    let mut c = google_claims("https://accounts.google.com", PUSH_SA);
    c.as_object_mut().unwrap().remove("email");
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::MissingClaim("email")));
}

#[tokio::test]
async fn google_oidc_wrong_email_is_forbidden() {
    let (_server, key, v) = google_setup(vec![PUSH_SA.into()]).await;
    let intruder = "scheduler@proj.iam.gserviceaccount.com";
    let err = v.verify(&key.sign(&google_claims("accounts.google.com", intruder))).await;
    let err = err.unwrap_err();
    assert_eq!(err, AuthError::Forbidden { email: intruder.into() });
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert_eq!(err.detail(), "caller not allowed");
    // Case differences in the email don't matter.
    let upper = PUSH_SA.to_uppercase();
    let got = v.verify(&key.sign(&google_claims("accounts.google.com", &upper))).await;
    assert_eq!(got, Ok(ServiceIdentity { email: upper }));
}

#[tokio::test]
async fn google_oidc_empty_allow_list_accepts_any_verified_email() {
    let (_server, key, v) = google_setup(vec![]).await;
    let anyone = "anyone@example.com";
    let got = v.verify(&key.sign(&google_claims("accounts.google.com", anyone))).await;
    assert_eq!(got, Ok(ServiceIdentity { email: anyone.into() }));
    let mut c = google_claims("accounts.google.com", anyone);
    c["email_verified"] = false.into();
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::EmailNotVerified));
}

#[tokio::test]
async fn google_oidc_wrong_audience_and_algorithms_are_refused() {
    let (server, key, v) = google_setup(vec![PUSH_SA.into()]).await;
    let mut c = google_claims("https://accounts.google.com", PUSH_SA);
    c["aud"] = "https://runq.example/internal/schedule".into();
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::WrongAudience));
    let mut c = google_claims("https://accounts.google.com", PUSH_SA);
    c["exp"] = (now() - 600).into();
    assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthError::Expired));

    // RS256 only: an ES256 key in the same set, HS256 and none are all refused.
    let ec = ec_key("ec-1");
    server.set_keys(&[&key, &ec]);
    let c = google_claims("https://accounts.google.com", PUSH_SA);
    assert_eq!(v.verify(&ec.sign(&c)).await, Err(AuthError::AlgorithmNotAllowed("ES256".into())));
    assert_eq!(v.verify(&hs256(SECRET, &c)).await, Err(AuthError::AlgorithmNotAllowed("HS256".into())));
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&c));
    assert_eq!(v.verify(&none).await, Err(AuthError::AlgorithmNotAllowed("none".into())));
}

//! The REST/JSON surface (HTTP/1.1), as the official crate's admin clients call it:
//! `PUT /v1/projects/p/topics/t?$alt=json;enum-encoding=int` and friends, plus the data
//! plane verbs (`:publish`, `:pull`, `:acknowledge`, `:modifyAckDeadline`) and the JWKS.
//! Paths are parsed by hand because Google's `{name}:verb` form doesn't fit a router.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::Shared;
use super::error::{ApiError, ApiResult};
use super::json::{self, Enc};
use super::oidc::Signer;

/// How long a REST pull waits for a message before answering with none.
const PULL_WAIT: Duration = Duration::from_secs(2);
/// Largest request body read: a 10 MB message is ~13.4 MB of base64 JSON; the size
/// check itself happens on the decoded message so the error is Pub/Sub's.
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Clone)]
struct RestState {
    broker: Shared,
    signer: Arc<Signer>,
}

/// The REST router: every path goes to one handler that parses Google's path forms.
pub(crate) fn router(broker: Shared, signer: Arc<Signer>) -> Router {
    Router::new().fallback(handle).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(RestState { broker, signer })
}

async fn handle(
    State(st): State<RestState>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    // Clients percent-encode names (`has%20space`); rules apply to the decoded name.
    let path = percent_decode(uri.path());
    let path = path.as_str();
    if path == "/oauth2/v3/certs" && method == Method::GET {
        return Json(st.signer.jwks().clone()).into_response();
    }
    if method == Method::GET
        && let Some(account) = path.strip_prefix(IDENTITY_PREFIX).and_then(|rest| rest.strip_suffix("/identity"))
    {
        return identity(&st.signer, &headers, account, uri.query().unwrap_or(""));
    }
    if path == "/" && method == Method::GET {
        return "Ok\n".into_response();
    }
    let query = uri.query().unwrap_or("");
    let enc = Enc { int_enums: query.contains("enum-encoding=int") };
    match route(&st.broker, &method, path, query, &body, enc).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The metadata server's identity-token path, before the account (`default` or an email).
const IDENTITY_PREFIX: &str = "/computeMetadata/v1/instance/service-accounts/";

/// The account `service-accounts/default/identity` signs as.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default@pubsub-emulator.iam.gserviceaccount.com";

/// `GET /computeMetadata/v1/instance/service-accounts/{account}/identity?audience=A`: an ID
/// token for `account` with audience `A`, signed like a push token (so it verifies against this
/// emulator's JWKS), as the metadata server of a Cloud Run instance answers it. Like Google's,
/// it wants the `Metadata-Flavor: Google` header and an audience; the answer is the bare token.
fn identity(signer: &Signer, headers: &axum::http::HeaderMap, account: &str, query: &str) -> Response {
    use axum::http::StatusCode;
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.\n").into_response();
    }
    let audience = percent_decode(&query_param(query, "audience").unwrap_or_default());
    if audience.is_empty() {
        return (StatusCode::BAD_REQUEST, "non-empty audience parameter required\n").into_response();
    }
    let email = match account {
        "default" => DEFAULT_SERVICE_ACCOUNT,
        email if email.contains('@') => email,
        _ => return (StatusCode::NOT_FOUND, "no such service account\n").into_response(),
    };
    match signer.token("metadata", email, &audience) {
        Ok(token) => ([(axum::http::header::CONTENT_TYPE, "application/text")], token).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("signing failed: {e}\n")).into_response(),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn page_args(query: &str) -> ApiResult<(i32, String)> {
    let size = match query_param(query, "pageSize") {
        Some(s) if !s.is_empty() => s.parse().map_err(|_| ApiError::invalid(format!("Invalid pageSize: {s}")))?,
        _ => 0,
    };
    let token = query_param(query, "pageToken").unwrap_or_default();
    let token = percent_decode(&token);
    Ok((size, token))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid("Invalid JSON payload received. Expected an object."));
    }
    Ok(v)
}

fn strings(v: &Value, key: &str) -> ApiResult<Vec<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid(format!("Invalid value at '{key}'")))
            })
            .collect(),
        Some(_) => Err(ApiError::invalid(format!("Invalid value at '{key}'"))),
    }
}

fn int(v: &Value, key: &str) -> ApiResult<i32> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ApiError::invalid(format!("Invalid value at '{key}'"))),
        Some(Value::String(s)) => s.parse().map_err(|_| ApiError::invalid(format!("Invalid value at '{key}'"))),
        Some(_) => Err(ApiError::invalid(format!("Invalid value at '{key}'"))),
    }
}

async fn route(broker: &Shared, method: &Method, path: &str, query: &str, body: &[u8], enc: Enc) -> ApiResult<Value> {
    let unknown = || ApiError::Unimplemented(format!("{method} {path} is not served by the emulator."));
    let rest = path.strip_prefix("/v1/").ok_or_else(unknown)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let (resource, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r, Some(v)),
        _ => (rest, None),
    };
    match (segs.as_slice(), verb) {
        // projects/{p}/topics
        (["projects", p, "topics"], None) if *method == Method::GET => {
            let (size, token) = page_args(query)?;
            let (topics, next) = broker.list_topics(&format!("projects/{p}"), size, &token)?;
            let mut out = json!({"topics": topics.iter().map(|t| json::topic_out(t, enc)).collect::<Vec<_>>()});
            if !next.is_empty() {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        // projects/{p}/subscriptions
        (["projects", p, "subscriptions"], None) if *method == Method::GET => {
            let (size, token) = page_args(query)?;
            let (subs, next) = broker.list_subscriptions(&format!("projects/{p}"), size, &token)?;
            let mut out =
                json!({"subscriptions": subs.iter().map(|s| json::subscription_out(s, enc)).collect::<Vec<_>>()});
            if !next.is_empty() {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        // projects/{p}/topics/{t}/subscriptions
        (["projects", _, "topics", _, "subscriptions"], None) if *method == Method::GET => {
            let topic = rest.strip_suffix("/subscriptions").unwrap_or(rest);
            let (size, token) = page_args(query)?;
            let (subs, next) = broker.list_topic_subscriptions(topic, size, &token)?;
            let mut out = json!({"subscriptions": subs});
            if !next.is_empty() {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        (["projects", _, "topics", _], None) => topic_method(broker, method, resource, body, enc),
        (["projects", _, "topics", _], Some("publish")) if *method == Method::POST => {
            let v = parse_body(body)?;
            let msgs = match v.get("messages") {
                Some(Value::Array(a)) => a.iter().map(json::message_in).collect::<ApiResult<Vec<_>>>()?,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(ApiError::invalid("Invalid value at 'messages'")),
            };
            let ids = broker.publish(resource, msgs)?;
            Ok(json!({"messageIds": ids}))
        }
        (["projects", _, "subscriptions", _], None) => subscription_method(broker, method, resource, body, enc),
        (["projects", _, "subscriptions", _], Some(verb)) if *method == Method::POST => {
            subscription_verb(broker, resource, verb, body).await
        }
        _ => Err(unknown()),
    }
}

fn topic_method(broker: &Shared, method: &Method, name: &str, body: &[u8], enc: Enc) -> ApiResult<Value> {
    match *method {
        Method::PUT => {
            let mut t = json::topic_in(&parse_body(body)?)?;
            t.name = name.to_string();
            Ok(json::topic_out(&broker.create_topic(t)?, enc))
        }
        Method::GET => Ok(json::topic_out(&broker.get_topic(name)?, enc)),
        Method::DELETE => broker.delete_topic(name).map(|_| json!({})),
        _ => Err(ApiError::Unimplemented(format!("{method} on topics is not served by the emulator."))),
    }
}

fn subscription_method(broker: &Shared, method: &Method, name: &str, body: &[u8], enc: Enc) -> ApiResult<Value> {
    match *method {
        Method::PUT => {
            let mut s = json::subscription_in(&parse_body(body)?)?;
            s.name = name.to_string();
            Ok(json::subscription_out(&broker.create_subscription(s)?, enc))
        }
        Method::GET => Ok(json::subscription_out(&broker.get_subscription(name)?, enc)),
        Method::DELETE => broker.delete_subscription(name).map(|_| json!({})),
        Method::PATCH => {
            let v = parse_body(body)?;
            let mut s = match v.get("subscription") {
                Some(s) => json::subscription_in(s)?,
                None => return Err(ApiError::invalid("subscription is required.")),
            };
            s.name = name.to_string();
            let paths: Vec<String> = match v.get("updateMask") {
                Some(Value::String(m)) => {
                    m.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
                }
                Some(Value::Object(o)) => strings(&Value::Object(o.clone()), "paths")?,
                _ => Vec::new(),
            };
            Ok(json::subscription_out(&broker.update_subscription(s, &paths)?, enc))
        }
        _ => Err(ApiError::Unimplemented(format!("{method} on subscriptions is not served by the emulator."))),
    }
}

async fn subscription_verb(broker: &Shared, name: &str, verb: &str, body: &[u8]) -> ApiResult<Value> {
    let v = parse_body(body)?;
    match verb {
        "pull" => {
            let max = int(&v, "maxMessages")?;
            let immediately = v.get("returnImmediately").and_then(Value::as_bool).unwrap_or(false);
            let got = broker.pull_wait(name, max, immediately, PULL_WAIT).await?;
            let received: Vec<Value> = got
                .iter()
                .map(|r| {
                    let mut m = json!({
                        "ackId": r.ack_id,
                        "message": r.message.as_ref().map(|m| json::message_out(m, false)),
                    });
                    if r.delivery_attempt > 0 {
                        m["deliveryAttempt"] = json!(r.delivery_attempt);
                    }
                    m
                })
                .collect();
            Ok(if received.is_empty() { json!({}) } else { json!({"receivedMessages": received}) })
        }
        "acknowledge" => {
            broker.acknowledge(name, &strings(&v, "ackIds")?)?;
            Ok(json!({}))
        }
        "modifyAckDeadline" => {
            broker.modify_ack_deadline(name, &strings(&v, "ackIds")?, int(&v, "ackDeadlineSeconds")?)?;
            Ok(json!({}))
        }
        "modifyPushConfig" => {
            let cfg = match v.get("pushConfig") {
                None | Some(Value::Null) => None,
                Some(p) => Some(json::push_config_in(p)?),
            };
            broker.modify_push_config(name, cfg)?;
            Ok(json!({}))
        }
        other => Err(ApiError::Unimplemented(format!("subscriptions:{other} is not served by the emulator."))),
    }
}

//! What the official crate doesn't send: REST data-plane verbs, Google's REST error body,
//! and the gRPC admin and unary Pull methods (through the emulator's own generated client).

use pubsub_emulator::proto as pb;
use pubsub_emulator::proto::publisher_client::PublisherClient;
use pubsub_emulator::proto::subscriber_client::SubscriberClient;
use serde_json::{Value, json};

use super::common::*;

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn rest_publish_pull_modack_ack_and_error_bodies() {
    use reqwest::Method;
    let Some(h) = start_own(1.0).await else { return };
    let http = reqwest::Client::new();
    let base = format!("{}/v1/projects/p", h.endpoint());
    let (s, t) = call(&http, Method::PUT, format!("{base}/topics/raw"), None).await;
    assert_eq!((s, &t["name"]), (200, &json!("projects/p/topics/raw")));
    assert_eq!(t["state"], "ACTIVE", "enum names unless enum-encoding=int");
    let (s, _) = call(
        &http,
        Method::PUT,
        format!("{base}/subscriptions/raw-sub"),
        Some(json!({"topic": "projects/p/topics/raw", "ackDeadlineSeconds": "30"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, r) = call(
        &http,
        Method::POST,
        format!("{base}/topics/raw:publish"),
        Some(json!({"messages": [{"data": "aGVsbG8=", "attributes": {"a": "b"}}]})),
    )
    .await;
    assert_eq!(s, 200);
    let id = r["messageIds"][0].as_str().unwrap().to_string();

    let pull = json!({"maxMessages": 10});
    let (_, r) = call(&http, Method::POST, format!("{base}/subscriptions/raw-sub:pull"), Some(pull.clone())).await;
    let rm = &r["receivedMessages"][0];
    assert_eq!(rm["message"]["data"], "aGVsbG8=");
    assert_eq!(rm["message"]["messageId"], id.as_str());
    assert_eq!(rm["message"]["attributes"]["a"], "b");
    let ack_id = rm["ackId"].as_str().unwrap().to_string();

    // ModifyAckDeadline 0 is a nack: it comes straight back.
    let (s, _) = call(
        &http,
        Method::POST,
        format!("{base}/subscriptions/raw-sub:modifyAckDeadline"),
        Some(json!({"ackIds": [ack_id], "ackDeadlineSeconds": 0})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, r) = call(&http, Method::POST, format!("{base}/subscriptions/raw-sub:pull"), Some(pull.clone())).await;
    let ack_id = r["receivedMessages"][0]["ackId"].as_str().unwrap().to_string();
    let (s, _) = call(
        &http,
        Method::POST,
        format!("{base}/subscriptions/raw-sub:acknowledge"),
        Some(json!({"ackIds": [ack_id]})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, r) = call(
        &http,
        Method::POST,
        format!("{base}/subscriptions/raw-sub:pull"),
        Some(json!({"maxMessages": 10, "returnImmediately": true})),
    )
    .await;
    assert!(r.get("receivedMessages").is_none(), "{r}");

    // Google's error body.
    let (s, e) = call(&http, Method::GET, format!("{base}/topics/missing"), None).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], 404);
    assert_eq!(e["error"]["status"], "NOT_FOUND");
    assert!(e["error"]["message"].as_str().unwrap().contains("missing"));
    let (s, e) = call(&http, Method::PUT, format!("{base}/topics/raw"), None).await;
    assert_eq!((s, &e["error"]["status"]), (409, &json!("ALREADY_EXISTS")));
    let bad = http.put(format!("{base}/topics/bad-json")).body("{not json").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    for (verb, body) in [
        ("modifyAckDeadline", json!({"ackIds": ["x"], "ackDeadlineSeconds": 601})),
        ("pull", json!({"maxMessages": 0})),
        ("acknowledge", json!({"ackIds": []})),
        ("pull", json!({"maxMessages": "many"})),
    ] {
        let (s, e) = call(&http, Method::POST, format!("{base}/subscriptions/raw-sub:{verb}"), Some(body)).await;
        assert_eq!((s, &e["error"]["status"]), (400, &json!("INVALID_ARGUMENT")), "{verb}");
    }
    let (s, e) = call(&http, Method::POST, format!("{base}/subscriptions/raw-sub:seek"), Some(json!({}))).await;
    assert_eq!((s, &e["error"]["status"]), (501, &json!("UNIMPLEMENTED")));
    let (s, jwks) = call(&http, Method::GET, h.jwks_url(), None).await;
    assert_eq!(s, 200);
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    h.shutdown().await;
}

#[tokio::test]
async fn grpc_admin_unary_pull_and_status_codes() {
    let Some(h) = start_own(1.0).await else { return };
    let mut publisher = PublisherClient::connect(h.endpoint()).await.unwrap();
    let mut subscriber = SubscriberClient::connect(h.endpoint()).await.unwrap();
    publisher.create_topic(pb::Topic { name: "projects/p/topics/g-topic".into(), ..Default::default() }).await.unwrap();
    let e = publisher
        .create_topic(pb::Topic { name: "projects/p/topics/g-topic".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = publisher.get_topic(pb::GetTopicRequest { topic: "projects/p/topics/nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let listed = publisher
        .list_topics(pb::ListTopicsRequest { project: "projects/p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.topics.len(), 1);
    let e = subscriber
        .create_subscription(pb::Subscription {
            name: "projects/p/subscriptions/g-sub".into(),
            topic: "projects/p/topics/g-topic".into(),
            ack_deadline_seconds: 700,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    subscriber
        .create_subscription(pb::Subscription {
            name: "projects/p/subscriptions/g-sub".into(),
            topic: "projects/p/topics/g-topic".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let msg = |data: Vec<u8>| pb::PubsubMessage { data: data.into(), ..Default::default() };
    let e = publisher
        .publish(pb::PublishRequest {
            topic: "projects/p/topics/g-topic".into(),
            messages: vec![msg(vec![0; 10 * 1024 * 1024 + 1])],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "over 10 MB");
    let ids = publisher
        .publish(pb::PublishRequest {
            topic: "projects/p/topics/g-topic".into(),
            messages: vec![msg(b"one".to_vec()), msg(b"two".to_vec())],
        })
        .await
        .unwrap()
        .into_inner()
        .message_ids;
    assert_eq!(ids.len(), 2);

    #[allow(deprecated)]
    let pulled = subscriber
        .pull(pb::PullRequest {
            subscription: "projects/p/subscriptions/g-sub".into(),
            max_messages: 10,
            return_immediately: false,
        })
        .await
        .unwrap()
        .into_inner()
        .received_messages;
    assert_eq!(pulled.len(), 2);
    let data: Vec<_> = pulled.iter().map(|r| r.message.as_ref().unwrap().data.to_vec()).collect();
    assert_eq!(data, [b"one".to_vec(), b"two".to_vec()]);
    let ack_ids: Vec<String> = pulled.iter().map(|r| r.ack_id.clone()).collect();
    subscriber
        .modify_ack_deadline(pb::ModifyAckDeadlineRequest {
            subscription: "projects/p/subscriptions/g-sub".into(),
            ack_ids: ack_ids.clone(),
            ack_deadline_seconds: 120,
        })
        .await
        .unwrap();
    subscriber
        .acknowledge(pb::AcknowledgeRequest { subscription: "projects/p/subscriptions/g-sub".into(), ack_ids })
        .await
        .unwrap();
    #[allow(deprecated)]
    let empty = subscriber
        .pull(pb::PullRequest {
            subscription: "projects/p/subscriptions/g-sub".into(),
            max_messages: 10,
            return_immediately: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.received_messages.is_empty());
    subscriber
        .delete_subscription(pb::DeleteSubscriptionRequest { subscription: "projects/p/subscriptions/g-sub".into() })
        .await
        .unwrap();
    publisher.delete_topic(pb::DeleteTopicRequest { topic: "projects/p/topics/g-topic".into() }).await.unwrap();
    let e = subscriber
        .acknowledge(pb::AcknowledgeRequest {
            subscription: "projects/p/subscriptions/g-sub".into(),
            ack_ids: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    h.shutdown().await;
}

//! Topic and subscription administration through the official admin clients (REST/JSON),
//! and the error codes Pub/Sub gives for bad requests.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model::{
    DeadLetterPolicy, Message, PushConfig, RetryPolicy, Subscription, push_config::OidcToken,
};

use super::common::*;

#[tokio::test]
async fn topics_and_subscriptions_crud() {
    let Some(h) = start(1.0).await else { return };
    let topics = topic_admin(&h).await;
    let subs = sub_admin(&h).await;

    let t =
        topics.create_topic().set_name(h.name("topics/orders")).set_labels([("team", "jobs")]).send().await.unwrap();
    assert_eq!(t.name, h.name("topics/orders"));
    assert_eq!(t.labels.get("team").map(String::as_str), Some("jobs"));
    create_topic(&h, &h.name("topics/dead")).await;
    create_topic(&h, &h.name("topics/elsewhere").replacen("projects/", "projects/other-", 1)).await;

    let got = topics.get_topic().set_topic(h.name("topics/orders")).send().await.unwrap();
    assert_eq!(got.name, h.name("topics/orders"));
    let listed = topics.list_topics().set_project(h.name("").trim_end_matches('/')).send().await.unwrap();
    let names: Vec<_> = listed.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, [h.name("topics/dead"), h.name("topics/orders")]);
    let paged =
        topics.list_topics().set_project(h.name("").trim_end_matches('/')).set_page_size(1).send().await.unwrap();
    assert_eq!(paged.topics.len(), 1);
    assert!(!paged.next_page_token.is_empty());

    let created = subs
        .create_subscription()
        .set_name(h.name("subscriptions/orders-push"))
        .set_topic(h.name("topics/orders"))
        .set_ack_deadline_seconds(600)
        .set_enable_message_ordering(true)
        .set_filter(r#"attributes.kind = "a""#)
        .set_push_config(PushConfig::new().set_push_endpoint("http://127.0.0.1:9/push").set_oidc_token(
            OidcToken::new().set_service_account_email("push@p.iam.gserviceaccount.com").set_audience("https://worker"),
        ))
        .set_retry_policy(RetryPolicy::new().set_minimum_backoff(dur("5s")).set_maximum_backoff(dur("300s")))
        .set_dead_letter_policy(
            DeadLetterPolicy::new().set_dead_letter_topic(h.name("topics/dead")).set_max_delivery_attempts(7),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.ack_deadline_seconds, 600);
    assert!(created.enable_message_ordering);
    assert_eq!(created.filter, r#"attributes.kind = "a""#);
    let push = created.push_config.as_ref().unwrap();
    assert_eq!(push.push_endpoint, "http://127.0.0.1:9/push");
    let oidc = push.oidc_token().unwrap();
    assert_eq!(oidc.service_account_email, "push@p.iam.gserviceaccount.com");
    assert_eq!(oidc.audience, "https://worker");
    let rp = created.retry_policy.as_ref().unwrap();
    assert_eq!(rp.minimum_backoff, Some(dur("5s")));
    assert_eq!(rp.maximum_backoff, Some(dur("300s")));
    let dlp = created.dead_letter_policy.as_ref().unwrap();
    assert_eq!(dlp.max_delivery_attempts, 7);
    assert_eq!(created.message_retention_duration, Some(dur("604800s")));

    // Defaults Pub/Sub fills in.
    let pull = subs
        .create_subscription()
        .set_name(h.name("subscriptions/orders-pull"))
        .set_topic(h.name("topics/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(pull.ack_deadline_seconds, 10);
    assert!(pull.push_config.is_none_or(|p| p.push_endpoint.is_empty()));

    let got = subs.get_subscription().set_subscription(h.name("subscriptions/orders-push")).send().await.unwrap();
    assert_eq!(got, created);
    let listed = subs.list_subscriptions().set_project(h.name("").trim_end_matches('/')).send().await.unwrap();
    assert_eq!(listed.subscriptions.len(), 2);
    let of_topic = topics.list_topic_subscriptions().set_topic(h.name("topics/orders")).send().await.unwrap();
    assert_eq!(of_topic.subscriptions, [h.name("subscriptions/orders-pull"), h.name("subscriptions/orders-push")]);

    let updated = subs
        .update_subscription()
        .set_subscription(
            Subscription::new().set_name(h.name("subscriptions/orders-pull")).set_ack_deadline_seconds(42),
        )
        .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["ack_deadline_seconds"]))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.ack_deadline_seconds, 42);

    subs.modify_push_config()
        .set_subscription(h.name("subscriptions/orders-pull"))
        .set_push_config(PushConfig::new().set_push_endpoint("http://127.0.0.1:9/other"))
        .send()
        .await
        .unwrap();
    let got = subs.get_subscription().set_subscription(h.name("subscriptions/orders-pull")).send().await.unwrap();
    assert_eq!(got.push_config.unwrap().push_endpoint, "http://127.0.0.1:9/other");

    subs.delete_subscription().set_subscription(h.name("subscriptions/orders-pull")).send().await.unwrap();
    let e = subs.get_subscription().set_subscription(h.name("subscriptions/orders-pull")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);

    topics.delete_topic().set_topic(h.name("topics/orders")).send().await.unwrap();
    let e = topics.get_topic().set_topic(h.name("topics/orders")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    // A subscription outlives its topic, pointing at the deleted-topic marker.
    let orphan = subs.get_subscription().set_subscription(h.name("subscriptions/orders-push")).send().await.unwrap();
    assert_eq!(orphan.topic, "_deleted-topic_");
    h.shutdown().await;
}

#[tokio::test]
async fn errors_carry_pubsub_codes() {
    let Some(h) = start(1.0).await else { return };
    let topics = topic_admin(&h).await;
    let subs = sub_admin(&h).await;
    create_topic(&h, &h.name("topics/t-1")).await;

    let e = topics.create_topic().set_name(h.name("topics/t-1")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::AlreadyExists);
    for bad in ["goog-topic", "ab", "1abc", "has space", "a*b"] {
        let e = topics.create_topic().set_name(h.name(&format!("topics/{bad}"))).send().await.unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "topic id {bad:?}");
    }
    let e = topics.get_topic().set_topic(h.name("topics/missing")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    let e = topics.delete_topic().set_topic(h.name("topics/missing")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);

    let sub = |name: &str| {
        subs.create_subscription().set_name(h.name(&format!("subscriptions/{name}"))).set_topic(h.name("topics/t-1"))
    };
    let e = subs
        .create_subscription()
        .set_name(h.name("subscriptions/s-0"))
        .set_topic(h.name("topics/missing"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    sub("s-1").send().await.unwrap();
    let e = sub("s-1").send().await.unwrap_err();
    assert_eq!(code(&e), Code::AlreadyExists);
    let e = sub("goog-sub").send().await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    for deadline in [5, 9, 601] {
        let e = sub("s-2").set_ack_deadline_seconds(deadline).send().await.unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "ack deadline {deadline}");
    }
    for attempts in [4, 101] {
        let e = sub("s-2")
            .set_dead_letter_policy(
                DeadLetterPolicy::new().set_dead_letter_topic(h.name("topics/t-1")).set_max_delivery_attempts(attempts),
            )
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "max attempts {attempts}");
    }
    let e = sub("s-2")
        .set_retry_policy(RetryPolicy::new().set_minimum_backoff(dur("60s")).set_maximum_backoff(dur("10s")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let e = sub("s-2").set_filter("attributes.").send().await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let e = sub("s-2").set_push_config(PushConfig::new().set_push_endpoint("not a url")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let e = subs.get_subscription().set_subscription(h.name("subscriptions/missing")).send().await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);

    // Publishing: missing topic, oversized and empty messages.
    let missing = publisher(&h, &h.name("topics/missing")).await;
    let e = missing.publish(Message::new().set_data("x")).await.unwrap_err();
    assert!(format!("{e:?}").contains("NotFound"), "{e:?}");
    let p = publisher(&h, &h.name("topics/t-1")).await;
    let e = p.publish(Message::new().set_data(vec![b'x'; 10 * 1024 * 1024 + 1])).await.unwrap_err();
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");
    let e = p.publish(Message::new()).await.unwrap_err();
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");
    // And the emulator is still up and serving.
    p.publish(Message::new().set_data("fine")).await.unwrap();
    h.shutdown().await;
}

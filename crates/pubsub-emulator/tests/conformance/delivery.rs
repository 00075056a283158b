//! Delivery semantics through the official Publisher (gRPC Publish) and Subscriber
//! (StreamingPull, Acknowledge, ModifyAckDeadline): exactly-once receipt when acked,
//! redelivery, ordering keys, retry backoff and dead-lettering.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use google_cloud_pubsub::model::{DeadLetterPolicy, Message, RetryPolicy};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_each_received_once_when_acked() {
    const N: usize = 10_000;
    let Some(h) = start(1.0).await else { return };
    create_topic(&h, &h.name("topics/bulk")).await;
    sub_admin(&h)
        .await
        .create_subscription()
        .set_name(h.name("subscriptions/bulk"))
        .set_topic(h.name("topics/bulk"))
        .set_ack_deadline_seconds(60)
        .send()
        .await
        .unwrap();
    let publisher = publisher(&h, &h.name("topics/bulk")).await;
    let futures: Vec<_> = (0..N).map(|i| publisher.publish(Message::new().set_data(format!("m{i}")))).collect();
    let ids: HashSet<String> = futures::future::try_join_all(futures).await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), N, "message ids are unique");

    let mut stream = subscriber(&h).await.subscribe(h.name("subscriptions/bulk")).build();
    let mut seen = HashSet::new();
    let mut data = HashSet::new();
    while seen.len() < N {
        let (m, handler) = next_within(&mut stream, Duration::from_secs(20)).await.expect("all messages arrive");
        assert!(seen.insert(m.message_id.clone()), "duplicate {}", m.message_id);
        data.insert(m.data.clone());
        handler.ack();
    }
    assert_eq!(seen, ids);
    assert_eq!(data.len(), N);
    // Acked means gone: nothing comes back.
    assert!(next_within(&mut stream, Duration::from_millis(700)).await.is_none());
    h.shutdown().await;
}

async fn pull_sub(
    h: &super::common::PubSub,
    name: &str,
    configure: impl FnOnce(
        google_cloud_pubsub::builder::subscription_admin::CreateSubscription,
    ) -> google_cloud_pubsub::builder::subscription_admin::CreateSubscription,
) {
    let b = sub_admin(h)
        .await
        .create_subscription()
        .set_name(h.name(&format!("subscriptions/{name}")))
        .set_topic(h.name("topics/t-1"));
    configure(b).send().await.unwrap();
}

#[tokio::test]
async fn redelivered_after_the_ack_deadline() {
    // 10 s deadline on a 1/100 clock: 100 ms. The client's lease extensions come every
    // few real seconds, too late, so the held message expires and comes back.
    let Some(h) = start(0.01).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    pull_sub(&h, "sub", |b| b).await;
    let id = publisher(&h, &h.name("topics/t-1")).await.publish(Message::new().set_data("late")).await.unwrap();
    let mut stream = subscriber(&h).await.subscribe(h.name("subscriptions/sub")).build();
    let (first, held) = next_within(&mut stream, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.message_id, id);
    let (again, h2) = next_within(&mut stream, Duration::from_secs(5)).await.expect("redelivered after the deadline");
    assert_eq!(again.message_id, id);
    assert_eq!(again.data, first.data);
    h2.ack();
    drop(held);
    h.shutdown().await;
}

#[tokio::test]
async fn redelivered_after_a_nack() {
    let Some(h) = start(1.0).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    pull_sub(&h, "sub", |b| b.set_ack_deadline_seconds(600)).await;
    let id = publisher(&h, &h.name("topics/t-1")).await.publish(Message::new().set_data("again")).await.unwrap();
    let mut stream = subscriber(&h).await.subscribe(h.name("subscriptions/sub")).build();
    let (m, handler) = next_within(&mut stream, Duration::from_secs(5)).await.unwrap();
    assert_eq!(m.message_id, id);
    handler.nack();
    let (m, handler) = next_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("a nack redelivers at once without a retry policy");
    assert_eq!(m.message_id, id);
    handler.ack();
    assert!(next_within(&mut stream, Duration::from_millis(500)).await.is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn ordering_keys_keep_order_per_key() {
    let Some(h) = start(1.0).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    pull_sub(&h, "sub", |b| b.set_enable_message_ordering(true)).await;
    let publisher = publisher(&h, &h.name("topics/t-1")).await;
    let keys = ["a", "b", "c"];
    let mut futures = Vec::new();
    for i in 0..200 {
        for k in keys {
            futures.push(publisher.publish(Message::new().set_data(format!("{i}")).set_ordering_key(k)));
        }
    }
    futures::future::try_join_all(futures).await.unwrap();
    let mut stream = subscriber(&h).await.subscribe(h.name("subscriptions/sub")).build();
    let mut got: HashMap<String, Vec<u32>> = HashMap::new();
    for _ in 0..600 {
        let (m, handler) = next_within(&mut stream, Duration::from_secs(10)).await.unwrap();
        let n: u32 = std::str::from_utf8(&m.data).unwrap().parse().unwrap();
        got.entry(m.ordering_key.clone()).or_default().push(n);
        handler.ack();
    }
    for k in keys {
        assert_eq!(got[k], (0..200).collect::<Vec<_>>(), "key {k} in order");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn nacks_back_off_per_retry_policy() {
    // min 10 s, max 40 s on a 1/50 clock: 200 ms, 400 ms, 800 ms, 800 ms.
    let Some(h) = start(0.02).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    pull_sub(&h, "sub", |b| {
        b.set_ack_deadline_seconds(600)
            .set_retry_policy(RetryPolicy::new().set_minimum_backoff(dur("10s")).set_maximum_backoff(dur("40s")))
    })
    .await;
    publisher(&h, &h.name("topics/t-1")).await.publish(Message::new().set_data("retry me")).await.unwrap();
    let mut stream = subscriber(&h).await.subscribe(h.name("subscriptions/sub")).build();
    let mut times = Vec::new();
    for _ in 0..5 {
        let (_, handler) = next_within(&mut stream, Duration::from_secs(5)).await.unwrap();
        times.push(Instant::now());
        handler.nack();
    }
    let expected = [200, 400, 800, 800];
    for (i, want) in expected.iter().enumerate() {
        let gap = times[i + 1].duration_since(times[i]);
        let want = Duration::from_millis(*want);
        assert!(
            gap >= want.mul_f64(0.9) && gap <= want + Duration::from_millis(400),
            "gap {i}: {gap:?}, expected about {want:?}"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn dead_lettered_after_max_delivery_attempts() {
    let Some(h) = start(0.01).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    create_topic(&h, &h.name("topics/dead")).await;
    sub_admin(&h)
        .await
        .create_subscription()
        .set_name(h.name("subscriptions/dead"))
        .set_topic(h.name("topics/dead"))
        .send()
        .await
        .unwrap();
    pull_sub(&h, "sub", |b| {
        b.set_dead_letter_policy(
            DeadLetterPolicy::new().set_dead_letter_topic(h.name("topics/dead")).set_max_delivery_attempts(5),
        )
    })
    .await;
    publisher(&h, &h.name("topics/t-1"))
        .await
        .publish(Message::new().set_data("poison").set_attributes([("k", "v")]))
        .await
        .unwrap();
    let client = subscriber(&h).await;
    let mut stream = client.subscribe(h.name("subscriptions/sub")).build();
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let (_, handler) = next_within(&mut stream, Duration::from_secs(5)).await.unwrap();
        attempts.push(handler.delivery_attempt());
        handler.nack();
    }
    assert_eq!(attempts, [1, 2, 3, 4, 5].map(Some));
    assert!(next_within(&mut stream, Duration::from_millis(500)).await.is_none(), "no sixth delivery");
    let mut dead = client.subscribe(h.name("subscriptions/dead")).build();
    let (m, handler) = next_within(&mut dead, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&m.data[..], b"poison");
    assert_eq!(m.attributes["k"], "v");
    assert_eq!(m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"], "5");
    assert_eq!(m.attributes["CloudPubSubDeadLetterSourceSubscription"], h.name("subscriptions/sub"));
    handler.ack();
    h.shutdown().await;
}

#[tokio::test]
async fn fan_out_reaches_subscriptions_that_existed_at_publish() {
    let Some(h) = start(1.0).await else { return };
    create_topic(&h, &h.name("topics/t-1")).await;
    pull_sub(&h, "early", |b| b).await;
    let publisher = publisher(&h, &h.name("topics/t-1")).await;
    publisher.publish(Message::new().set_data("one")).await.unwrap();
    pull_sub(&h, "late", |b| b).await;
    pull_sub(&h, "only-a", |b| b.set_filter(r#"attributes.kind = "a""#)).await;
    publisher.publish(Message::new().set_data("two").set_attributes([("kind", "a")])).await.unwrap();
    publisher.publish(Message::new().set_data("three").set_attributes([("kind", "b")])).await.unwrap();
    let client = subscriber(&h).await;
    let drain = async |name: &str, n: usize| {
        let mut stream = client.subscribe(h.name(&format!("subscriptions/{name}"))).build();
        let mut got = Vec::new();
        for _ in 0..n {
            let (m, handler) = next_within(&mut stream, Duration::from_secs(5)).await.unwrap();
            got.push(String::from_utf8(m.data.to_vec()).unwrap());
            handler.ack();
        }
        assert!(next_within(&mut stream, Duration::from_millis(300)).await.is_none());
        got.sort();
        got
    };
    assert_eq!(drain("early", 3).await, ["one", "three", "two"]);
    assert_eq!(drain("late", 2).await, ["three", "two"]);
    assert_eq!(drain("only-a", 1).await, ["two"]);
    h.shutdown().await;
}

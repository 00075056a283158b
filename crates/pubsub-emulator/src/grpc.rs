//! gRPC `google.pubsub.v1.Publisher` and `Subscriber` (HTTP/2), what the official crate's
//! Publisher and Subscriber use: `Publish`, `StreamingPull`, `Acknowledge`,
//! `ModifyAckDeadline`, plus the admin and unary `Pull` methods for other clients.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::broker::ACK_DEADLINE_RANGE;
use super::error::ApiError;
use super::proto as pb;
use super::subscription::FlowLimits;

/// How long a unary Pull waits for a message before answering with none.
const PULL_WAIT: Duration = Duration::from_secs(2);
/// Most messages in one StreamingPull response.
const STREAM_BATCH: usize = 1000;
/// An empty response this often keeps idle streams alive (clients with
/// `protocol_version >= 1` accept them as heartbeats).
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Both gRPC services over one broker.
#[derive(Clone)]
pub(crate) struct Grpc {
    pub(crate) broker: Shared,
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::publisher_server::Publisher for Grpc {
    async fn create_topic(&self, req: Request<pb::Topic>) -> R<pb::Topic> {
        Ok(Response::new(self.broker.create_topic(req.into_inner())?))
    }

    async fn get_topic(&self, req: Request<pb::GetTopicRequest>) -> R<pb::Topic> {
        Ok(Response::new(self.broker.get_topic(&req.into_inner().topic)?))
    }

    async fn publish(&self, req: Request<pb::PublishRequest>) -> R<pb::PublishResponse> {
        let req = req.into_inner();
        let message_ids = self.broker.publish(&req.topic, req.messages)?;
        Ok(Response::new(pb::PublishResponse { message_ids }))
    }

    async fn list_topics(&self, req: Request<pb::ListTopicsRequest>) -> R<pb::ListTopicsResponse> {
        let req = req.into_inner();
        let (topics, next_page_token) = self.broker.list_topics(&req.project, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListTopicsResponse { topics, next_page_token }))
    }

    async fn list_topic_subscriptions(
        &self,
        req: Request<pb::ListTopicSubscriptionsRequest>,
    ) -> R<pb::ListTopicSubscriptionsResponse> {
        let req = req.into_inner();
        let (subscriptions, next_page_token) =
            self.broker.list_topic_subscriptions(&req.topic, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListTopicSubscriptionsResponse { subscriptions, next_page_token }))
    }

    async fn delete_topic(&self, req: Request<pb::DeleteTopicRequest>) -> R<()> {
        self.broker.delete_topic(&req.into_inner().topic)?;
        Ok(Response::new(()))
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::subscriber_server::Subscriber for Grpc {
    async fn create_subscription(&self, req: Request<pb::Subscription>) -> R<pb::Subscription> {
        Ok(Response::new(self.broker.create_subscription(req.into_inner())?))
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> R<pb::Subscription> {
        Ok(Response::new(self.broker.get_subscription(&req.into_inner().subscription)?))
    }

    async fn update_subscription(&self, req: Request<pb::UpdateSubscriptionRequest>) -> R<pb::Subscription> {
        let req = req.into_inner();
        let sub = req.subscription.ok_or_else(|| ApiError::invalid("subscription is required."))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        Ok(Response::new(self.broker.update_subscription(sub, &paths)?))
    }

    async fn list_subscriptions(&self, req: Request<pb::ListSubscriptionsRequest>) -> R<pb::ListSubscriptionsResponse> {
        let req = req.into_inner();
        let (subscriptions, next_page_token) =
            self.broker.list_subscriptions(&req.project, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListSubscriptionsResponse { subscriptions, next_page_token }))
    }

    async fn delete_subscription(&self, req: Request<pb::DeleteSubscriptionRequest>) -> R<()> {
        self.broker.delete_subscription(&req.into_inner().subscription)?;
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(&self, req: Request<pb::ModifyAckDeadlineRequest>) -> R<()> {
        let req = req.into_inner();
        self.broker.modify_ack_deadline(&req.subscription, &req.ack_ids, req.ack_deadline_seconds)?;
        Ok(Response::new(()))
    }

    async fn acknowledge(&self, req: Request<pb::AcknowledgeRequest>) -> R<()> {
        let req = req.into_inner();
        self.broker.acknowledge(&req.subscription, &req.ack_ids)?;
        Ok(Response::new(()))
    }

    #[allow(deprecated)]
    async fn pull(&self, req: Request<pb::PullRequest>) -> R<pb::PullResponse> {
        let req = req.into_inner();
        let received_messages =
            self.broker.pull_wait(&req.subscription, req.max_messages, req.return_immediately, PULL_WAIT).await?;
        Ok(Response::new(pb::PullResponse { received_messages }))
    }

    type StreamingPullStream = PullStream;

    async fn streaming_pull(&self, req: Request<Streaming<pb::StreamingPullRequest>>) -> R<Self::StreamingPullStream> {
        let mut inbound = req.into_inner();
        let first = match inbound.next().await {
            Some(Ok(r)) => r,
            Some(Err(s)) => return Err(s),
            None => {
                return Err(Status::invalid_argument("StreamingPull needs a first request."));
            }
        };
        if first.subscription.is_empty() {
            return Err(ApiError::invalid("The first StreamingPull request must name a subscription.").into());
        }
        if !ACK_DEADLINE_RANGE.contains(&first.stream_ack_deadline_seconds) {
            return Err(ApiError::invalid(format!(
                "Invalid stream_ack_deadline_seconds: {}. It must be between 10 and 600.",
                first.stream_ack_deadline_seconds
            ))
            .into());
        }
        let broker = self.broker.clone();
        let name = first.subscription.clone();
        let (exactly_once, ordering) = broker.subscription_properties(&name)?;
        apply_stream_request(&broker, &name, &first)?;
        let consumer = broker.new_consumer();
        let limits =
            FlowLimits { max_messages: first.max_outstanding_messages, max_bytes: first.max_outstanding_bytes };
        let deadline = first.stream_ack_deadline_seconds;
        let (tx, rx) = mpsc::channel::<Result<pb::StreamingPullResponse, Status>>(4);
        let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<()>();

        // Inbound: acks, modacks and keepalives until the client half-closes.
        let inbound_broker = broker.clone();
        let inbound_name = name.clone();
        let inbound_tx = tx.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                match msg {
                    Ok(r) => {
                        if let Err(e) = apply_stream_request(&inbound_broker, &inbound_name, &r) {
                            let _ = inbound_tx.send(Err(e.into())).await;
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = closed_tx.send(());
        });

        // Outbound: leased messages as they become available, within flow control.
        tokio::spawn(async move {
            let mut first_response = true;
            loop {
                let notify = match broker.notifier(&name) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let got = match broker.pull(&name, consumer, STREAM_BATCH, limits, Some(deadline)) {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                if !got.is_empty() || first_response {
                    let resp = pb::StreamingPullResponse {
                        received_messages: got,
                        subscription_properties: first_response.then_some(
                            pb::streaming_pull_response::SubscriptionProperties {
                                exactly_once_delivery_enabled: exactly_once,
                                message_ordering_enabled: ordering,
                            },
                        ),
                        ..Default::default()
                    };
                    first_response = false;
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = &mut closed_rx => break,
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        if tx.send(Ok(pb::StreamingPullResponse::default())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            broker.forget_consumer(&name, consumer);
        });

        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn modify_push_config(&self, req: Request<pb::ModifyPushConfigRequest>) -> R<()> {
        let req = req.into_inner();
        self.broker.modify_push_config(&req.subscription, req.push_config)?;
        Ok(Response::new(()))
    }
}

/// Applies the acks and deadline changes a StreamingPull request carries.
fn apply_stream_request(broker: &Shared, name: &str, r: &pb::StreamingPullRequest) -> Result<(), ApiError> {
    if !r.subscription.is_empty() && r.subscription != name {
        return Err(ApiError::invalid("subscription may only be set on the first StreamingPull request."));
    }
    if r.modify_deadline_seconds.len() != r.modify_deadline_ack_ids.len() {
        return Err(ApiError::invalid(
            "modify_deadline_seconds and modify_deadline_ack_ids must have the same length.",
        ));
    }
    if !r.ack_ids.is_empty() {
        broker.acknowledge(name, &r.ack_ids)?;
    }
    for (secs, id) in r.modify_deadline_seconds.iter().zip(&r.modify_deadline_ack_ids) {
        broker.modify_ack_deadline(name, std::slice::from_ref(id), *secs)?;
    }
    Ok(())
}

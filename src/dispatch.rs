//! Dispatch: publishing job ids to Pub/Sub, the outbox marker, and the relay that republishes
//! whatever a crash or an outage left undispatched.
//!
//! A job exists once its row commits; publishing is an optimisation the relay can always redo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use crate::job::Priority;
use crate::store::{self, Publication};
use crate::telemetry::metrics as metrics_names;
use crate::telemetry::otel;

/// Topic names start with this unless `RUNQ_TOPIC_PREFIX` says otherwise.
pub const DEFAULT_TOPIC_PREFIX: &str = "runq";
/// How long one publish may take before it counts as failed (the relay retries later).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// A queued job whose message went out this long ago without a claim is published again. Ten
/// minutes is runq's push ack deadline: the longest Pub/Sub itself waits on a delivery before
/// it redelivers, so a republish sooner would only duplicate messages still in flight.
pub const DEFAULT_REDISPATCH_AFTER: Duration = Duration::from_secs(10 * 60);
/// Pub/Sub's limit on an attribute value; a longer one makes it refuse the whole message.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Where jobs are published.
#[derive(Debug, Clone)]
pub struct PubSubSettings {
    /// `PUBSUB_EMULATOR_HOST`: talk to an emulator at this `host:port` with no credentials.
    pub emulator_host: Option<String>,
    /// `RUNQ_PUBSUB_PROJECT` (else `GOOGLE_CLOUD_PROJECT`): the project of the topics.
    pub project: String,
    /// `RUNQ_TOPIC_PREFIX` (default `runq`): topics are `{prefix}-jobs-{priority}`.
    pub topic_prefix: String,
    /// `RUNQ_REDISPATCH_AFTER_SECS`: republish a queued job whose message went unclaimed this long.
    pub redispatch_after: Duration,
}

impl PubSubSettings {
    /// The endpoint clients must use, when it isn't Google's.
    pub fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| if h.contains("://") { h.clone() } else { format!("http://{h}") })
    }

    /// The topic id of a queue, e.g. `runq-jobs-high` or `runq-jobs-heavy`.
    pub fn topic_id(&self, queue: &str) -> String {
        format!("{}-jobs-{queue}", self.topic_prefix)
    }

    /// The full topic name of a queue.
    pub fn queue_topic(&self, queue: &str) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic_id(queue))
    }

    /// The dead-letter topic's id.
    pub fn dead_letter_topic_id(&self) -> String {
        format!("{}-jobs-dead", self.topic_prefix)
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("can't create the Pub/Sub publisher: {0}")]
    Client(String),
    /// Pub/Sub refused this message (an attribute it rejects, a missing topic, no permission):
    /// sending it again unchanged won't help.
    #[error("Pub/Sub refused the message: {0}")]
    Refused(String),
    /// Anything that may pass on its own: Pub/Sub unavailable, a connection reset.
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("publish timed out after {0:?}")]
    Timeout(Duration),
}

impl DispatchError {
    /// True when Pub/Sub refused the message itself, not when it was merely unreachable.
    pub fn is_refusal(&self) -> bool {
        matches!(self, DispatchError::Refused(_))
    }

    fn of(e: &google_cloud_pubsub::error::PublishError) -> Self {
        use google_cloud_gax::error::rpc::Code;
        let refused = match e {
            google_cloud_pubsub::error::PublishError::Rpc(err) => err.status().is_some_and(|s| {
                matches!(
                    s.code,
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::PermissionDenied
                        | Code::FailedPrecondition
                        | Code::OutOfRange
                        | Code::Unimplemented
                )
            }),
            _ => false,
        };
        if refused { DispatchError::Refused(e.to_string()) } else { DispatchError::Publish(e.to_string()) }
    }
}

/// How a publish went, per job.
#[derive(Debug, Default)]
pub struct Published {
    /// Sent.
    pub sent: Vec<Uuid>,
    /// Refused by Pub/Sub even when sent alone, with the reason: these back off alone.
    pub refused: Vec<(Uuid, String)>,
    /// Not sent for a reason that may pass (Pub/Sub unreachable): tried again on the next pass.
    pub failed: Vec<Uuid>,
}

/// Whether a publish batches with its neighbours (the common case) or goes out alone (to find
/// out whether a refused batch was refused for this message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batching {
    Batched,
    Alone,
}

/// Publishes `{"job_id", "attempt"}` to each queue's topic. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    /// One publisher per queue, batched: the priorities' made up front, a function's own on first use.
    batched: Arc<tokio::sync::RwLock<HashMap<String, Publisher>>>,
    /// One publisher per queue that sends each message alone, made on first use.
    alone: Arc<tokio::sync::RwLock<HashMap<String, Publisher>>>,
    settings: Arc<PubSubSettings>,
    timeout: Duration,
}

/// Credentials for the emulator: none.
pub fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

impl Dispatcher {
    /// Builds one publisher per priority. Batching waits at most 1 ms: concurrent submits still
    /// share requests, and a lone submit isn't held back (5 ms cost 4 ms of submit→start p50 and
    /// a quarter of the e2e throughput on the bench).
    pub async fn connect(settings: &PubSubSettings) -> Result<Self, DispatchError> {
        let mut publishers = HashMap::new();
        for priority in Priority::ALL {
            let publisher = Self::publisher(settings, priority.as_str(), Batching::Batched).await?;
            publishers.insert(priority.as_str().to_owned(), publisher);
        }
        Ok(Self {
            batched: Arc::new(tokio::sync::RwLock::new(publishers)),
            alone: Arc::default(),
            settings: Arc::new(settings.clone()),
            timeout: PUBLISH_TIMEOUT,
        })
    }

    async fn publisher(settings: &PubSubSettings, queue: &str, batching: Batching) -> Result<Publisher, DispatchError> {
        let mut builder = Publisher::builder(settings.queue_topic(queue));
        builder = match batching {
            Batching::Batched => builder.set_delay_threshold(Duration::from_millis(1)),
            Batching::Alone => builder.set_message_count_threshold(1).set_delay_threshold(Duration::ZERO),
        };
        if let Some(endpoint) = settings.endpoint() {
            builder = builder.with_endpoint(endpoint).with_credentials(anonymous());
        }
        builder.build().await.map_err(|e| DispatchError::Client(e.to_string()))
    }

    /// The publisher of `queue`, made on first use.
    async fn publisher_for(&self, queue: &str, batching: Batching) -> Result<Publisher, DispatchError> {
        let map = match batching {
            Batching::Batched => &self.batched,
            Batching::Alone => &self.alone,
        };
        if let Some(p) = map.read().await.get(queue) {
            return Ok(p.clone());
        }
        let mut publishers = map.write().await;
        if let Some(p) = publishers.get(queue) {
            return Ok(p.clone());
        }
        let publisher = Self::publisher(&self.settings, queue, batching).await?;
        publishers.insert(queue.to_owned(), publisher.clone());
        Ok(publisher)
    }

    /// Publishes one job's message (batched with concurrent ones).
    pub async fn publish(&self, job: &Publication) -> Result<(), DispatchError> {
        self.publish_with(job, Batching::Batched).await
    }

    async fn publish_with(&self, job: &Publication, batching: Batching) -> Result<(), DispatchError> {
        let queue = job.queue_name();
        let span = tracing::info_span!("publish", otel.name = %format!("publish {queue}"), otel.kind = "producer",
            messaging.system = "gcp_pubsub", messaging.destination.name = %queue, job_id = %job.id,
            function = %job.function, attempt = job.attempt, otel.status_code = tracing::field::Empty);
        // A trace context is worth less than the job: Pub/Sub refuses a whole message over one
        // bad attribute, so one that isn't a valid W3C traceparent is left out (the API stores
        // only valid ones; rows written before it checked may hold anything).
        let stored = job
            .trace_context
            .as_deref()
            .filter(|tp| tp.len() <= MAX_ATTRIBUTE_BYTES && crate::telemetry::parse_traceparent(tp).is_some());
        otel::set_remote_parent(&span, stored);
        // The message carries this publish's context when traces are exported (the push is its
        // child), else the stored one as it is (logs still join on the trace id).
        let traceparent = otel::traceparent_of(&span).or_else(|| stored.map(str::to_owned));
        let result = self.publish_once(job, batching, traceparent).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn publish_once(
        &self,
        job: &Publication,
        batching: Batching,
        traceparent: Option<String>,
    ) -> Result<(), DispatchError> {
        let data = crate::message::JobMessage { job_id: job.id, attempt: job.attempt }.encode();
        let mut attributes = vec![("function", job.function.clone()), ("priority", job.priority.as_str().to_owned())];
        if let Some(tp) = traceparent {
            attributes.push(("traceparent", tp));
        }
        let message = Message::new().set_data(data).set_attributes(attributes);
        let publisher = self.publisher_for(job.queue_name(), batching).await?;
        let result = match tokio::time::timeout(self.timeout, publisher.publish(message)).await {
            Ok(Ok(_message_id)) => Ok(()),
            Ok(Err(e)) => Err(DispatchError::of(&e)),
            Err(_) => Err(DispatchError::Timeout(self.timeout)),
        };
        let name = if result.is_ok() { metrics_names::PUBLISHED } else { metrics_names::PUBLISH_ERRORS };
        metrics::counter!(name, "queue" => job.queue_name().to_owned()).increment(1);
        result
    }

    /// Publishes a batch concurrently. A message Pub/Sub refuses fails the whole request it
    /// was batched in, so each refused one is sent again alone: only a message refused on its
    /// own counts against its job, and its neighbours go out.
    pub async fn publish_all(&self, batch: Vec<Publication>) -> Published {
        let results = futures::future::join_all(batch.iter().map(|job| self.publish(job))).await;
        let mut out = Published::default();
        let mut suspects = Vec::new();
        let mut first_error = None;
        for (job, result) in batch.iter().zip(results) {
            match result {
                Ok(()) => out.sent.push(job.id),
                Err(e) if e.is_refusal() => suspects.push(job),
                Err(e) => {
                    out.failed.push(job.id);
                    first_error.get_or_insert(e);
                }
            }
        }
        let alone = futures::future::join_all(suspects.iter().map(|job| self.publish_with(job, Batching::Alone))).await;
        for (job, result) in suspects.into_iter().zip(alone) {
            match result {
                Ok(()) => out.sent.push(job.id),
                Err(e) if e.is_refusal() => {
                    tracing::warn!(job_id = %job.id, error = %e, "Pub/Sub refused this job's message; it backs off alone");
                    out.refused.push((job.id, e.to_string()));
                }
                Err(e) => {
                    out.failed.push(job.id);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            tracing::warn!(error = %e, failed = out.failed.len(), "publishing failed; the relay will retry");
        }
        out
    }
}

/// After a new job's row committed (a submit, a batch, a schedule's firing): count it and, when
/// it is due, publish it off the request path (a delayed job waits for the relay).
pub fn job_created(outbox: Option<&Outbox>, job: &crate::job::Job, trace_context: Option<&str>) {
    metrics::counter!(metrics_names::JOBS_SUBMITTED, "function" => job.function.clone(), "priority" => job.priority.as_str())
        .increment(1);
    // Due at once when it was created due: both times come from the database's clock, in the
    // insert that made the row (never this process's, which may be skewed).
    if let Some(outbox) = outbox
        && job.run_after <= job.status.created_at
    {
        outbox.dispatch(Publication::of(job, trace_context));
    }
}

/// Publishes jobs right after their submit commits, off the request path, and marks them
/// dispatched in batches on the relaxed pool. Anything it misses, the relay picks up.
#[derive(Clone)]
pub struct Outbox {
    dispatcher: Dispatcher,
    published: mpsc::Sender<Uuid>,
}

/// Most dispatched marks written in one statement.
const MARK_BATCH: usize = 512;

impl Outbox {
    /// Starts the marker task writing `dispatched_at` through `relaxed`.
    pub fn new(dispatcher: Dispatcher, relaxed: PgPool) -> Self {
        let (tx, mut rx) = mpsc::channel::<Uuid>(16 * MARK_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MARK_BATCH);
            while rx.recv_many(&mut batch, MARK_BATCH).await > 0 {
                if let Err(e) = store::mark_dispatched(&relaxed, &batch).await {
                    // The relay republishes after the redispatch delay: a duplicate, never a loss.
                    tracing::warn!(error = %e, count = batch.len(), "could not mark jobs dispatched");
                }
                batch.clear();
            }
        });
        Self { dispatcher, published: tx }
    }

    /// Publishes a newly committed job in the background.
    pub fn dispatch(&self, job: Publication) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.dispatcher.publish(&job).await {
                Ok(()) => {
                    let _ = this.published.send(job.id).await;
                }
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "publish failed; the relay will retry"),
            }
        });
    }
}

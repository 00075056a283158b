//! What the servers are built from: the pools, the declared functions and schedules, the Pub/Sub
//! publisher, Cloud Storage and Google's signing keys, connected once per process.
//!
//! `runq api`, `runq worker` and `runq dev` fill in [`Connect`] (from the configuration tree, or
//! with the dev stack's own emulator) and call [`Services::connect`]; [`crate::api::run`] and
//! [`crate::worker::run`] build their state from the result. Nothing else assembles these parts.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::auth::JwksCache;
use crate::dispatch::{Dispatcher, Outbox, PubSubSettings};
use crate::function::Registry;
use crate::schedule::Schedules;
use crate::storage::{BlobStore, StorageSettings};
use crate::store;

/// Why a server could not start.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// How to connect the parts.
#[derive(Debug, Clone)]
pub struct Connect {
    /// The Postgres database that holds the jobs.
    pub database_url: String,
    /// Size of the durable pool (claims, outcomes, submits).
    pub max_connections: u32,
    /// Size of the pool that commits without waiting for the WAL flush (progress, heartbeats,
    /// the outbox's dispatched marks).
    pub relaxed_connections: u32,
    /// How long a request waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// Where jobs are published; `None` leaves them recorded, unpublished.
    pub pubsub: Option<PubSubSettings>,
    /// Cloud Storage, or `None` without a results bucket or an emulator.
    pub storage: Option<StorageSettings>,
    /// The keys that sign Google's OIDC tokens (the emulator's locally).
    pub oidc_jwks_url: String,
}

/// Publishing: the settings, the publisher and the outbox that publishes after a commit.
#[derive(Clone)]
pub struct Publishing {
    pub settings: PubSubSettings,
    pub dispatcher: Dispatcher,
    pub outbox: Outbox,
}

/// The connected parts. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Durable commits.
    pub pool: PgPool,
    /// `synchronous_commit = off`: progress, heartbeats, dispatched marks.
    pub relaxed: PgPool,
    pub registry: Arc<Registry>,
    pub schedules: Arc<Schedules>,
    pub publishing: Option<Publishing>,
    pub storage: Option<Arc<BlobStore>>,
    /// Google's OIDC keys, shared by every verifier of Google callers in the process.
    pub google_jwks: Arc<JwksCache>,
    pub http: reqwest::Client,
}

impl Services {
    /// Builds the pools (lazily: nothing is dialled until first use), the publisher, the GCS
    /// client and the key cache.
    pub async fn connect(connect: &Connect, registry: Registry, schedules: Schedules) -> Result<Self, StartError> {
        let pool = store::connect_lazy(&connect.database_url, connect.max_connections, connect.acquire_timeout)?;
        let relaxed =
            store::connect_relaxed(&connect.database_url, connect.relaxed_connections, connect.acquire_timeout)?;
        let publishing = match &connect.pubsub {
            Some(settings) => {
                let dispatcher = Dispatcher::connect(settings).await?;
                let outbox = Outbox::new(dispatcher.clone(), relaxed.clone());
                Some(Publishing { settings: settings.clone(), dispatcher, outbox })
            }
            None => None,
        };
        let storage = match &connect.storage {
            Some(settings) => Some(Arc::new(BlobStore::new(settings).await?)),
            None => None,
        };
        let http = reqwest::Client::new();
        let google_jwks = Arc::new(JwksCache::new(connect.oidc_jwks_url.clone(), http.clone())?);
        Ok(Self {
            pool,
            relaxed,
            registry: Arc::new(registry),
            schedules: Arc::new(schedules),
            publishing,
            storage,
            google_jwks,
            http,
        })
    }

    /// Services over a pool that exists already (a test's database, an embedding application's
    /// pool): no publishing (the relay's job), no Cloud Storage, Google's keys from `oidc_jwks_url`.
    pub fn over(
        pool: PgPool,
        registry: Registry,
        schedules: Schedules,
        oidc_jwks_url: &str,
    ) -> Result<Self, StartError> {
        let http = reqwest::Client::new();
        let google_jwks = Arc::new(JwksCache::new(oidc_jwks_url, http.clone())?);
        Ok(Self {
            relaxed: pool.clone(),
            pool,
            registry: Arc::new(registry),
            schedules: Arc::new(schedules),
            publishing: None,
            storage: None,
            google_jwks,
            http,
        })
    }

    /// The outbox, when jobs are published.
    pub fn outbox(&self) -> Option<Outbox> {
        self.publishing.as_ref().map(|p| p.outbox.clone())
    }
}

//! runq: background jobs for Google Cloud Run.
//!
//! An API records each job in Postgres and publishes its id to a Pub/Sub topic per
//! queue; Pub/Sub pushes it to a worker service, which claims it, runs the function
//! and streams progress into Postgres; clients poll `/jobs/{id}/status`.
//!
//! # Layout
//! - [`app`]: the [`App`] builder users extend with their functions, and the `runq` CLI.
//! - [`config`]: the configuration tree: every environment variable, declared once (clap).
//! - [`services`]: the parts the servers are built from (pools, publisher, storage, keys),
//!   connected in one place for `runq api`, `runq worker` and `runq dev`.
//! - [`job`]: the job model and its status machine.
//! - [`store`]: Postgres, the source of truth; every transition is one guarded UPDATE.
//! - [`submit`]: the one check of a new job, for the API, schedules and spawned children.
//! - [`function`]: the [`Function`] trait, the registry and the built-in functions.
//! - [`limits`]: concurrency and rate limits declared in code, and the claim's decision.
//! - [`api`]: the public JSON API (`/jobs`), health and OpenAPI.
//! - [`dashboard`]: the web dashboard at `/dashboard` (Flower's role), its stats and run history.
//! - [`auth`]: bearer JWTs for the public API, Google OIDC for push and internal calls.
//! - [`dispatch`]: publishing jobs to Pub/Sub, the outbox marker and the relay.
//! - [`worker`]: the push endpoint that claims and runs jobs, leases, graceful shutdown.
//! - [`dev`]: `runq dev`, the whole system in one process.
//! - [`emulator`]: a Pub/Sub emulator (REST and gRPC on one port, push with OIDC).
//! - [`storage`]: Cloud Storage for large results and function inputs (`gs://` URIs).
//! - [`schedule`]: periodic jobs (Cloud Scheduler replaces beat), the sweep and cleanup.
//! - [`infra`]: `runq infra export`, the queues and schedules that `infra/` reads.
//! - [`telemetry`]: logs in the Cloud Logging format, trace ids.
//! - [`workflow`]: workflows (DAGs of steps, fan-out and fan-in, signal steps): their shape and checks.
//! - [`client`]: the command-line client of the API (`runq submit/status/cancel/wait/jobs`).

pub mod api;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod dev;
pub mod dispatch;
/// The Pub/Sub emulator (the `pubsub-emulator` crate of this workspace), behind `runq emulator`
/// and `runq dev`.
pub use pubsub_emulator as emulator;
pub mod function;
pub mod infra;
pub mod job;
pub mod limits;
pub mod maintenance;
pub mod message;
pub mod schedule;
pub mod server;
pub mod services;
pub mod storage;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod worker;
pub mod workflow;

pub use app::App;
pub use function::Function;

//! The Pub/Sub emulator: REST/JSON over HTTP/1.1 and gRPC over HTTP/2 on one port,
//! push delivery with OIDC tokens signed by its own key, JWKS at `/oauth2/v3/certs`.
//! Used by `runq emulator`, `runq dev` and the tests.
//!
//! # Layout
//! - [`proto`]: our google.pubsub.v1 subset, generated from `proto/` (server and client).
//! - `names`: resource-name rules; `error`: Google-shaped errors for both transports.
//! - `broker`: topics, subscriptions and publishing; `subscription`: one subscription's
//!   backlog, leases, ordering keys, backoff and dead-lettering; `filter`: subscription filters.
//! - `rest` + `json`: the REST/JSON surface; `grpc`: the Publisher and Subscriber services.
//! - `push`: push delivery; `oidc`: the signing key, JWKS and cached push tokens.
//! - `clock`: the test clock; `server`: one listener, both transports, shutdown.

mod broker;
mod clock;
mod error;
mod filter;
mod grpc;
mod json;
mod names;
mod oidc;
mod push;
mod rest;

pub use rest::DEFAULT_SERVICE_ACCOUNT;
mod server;
mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;

/// Generated protobuf types, gRPC servers and gRPC clients for the served subset of
/// `google.pubsub.v1`. Public so tests and tools can speak gRPC to the emulator directly
/// (the official crate does not expose unary `Pull` or the gRPC admin methods).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("google.pubsub.v1");
}

/// Default listen address, the same as Google's emulator.
pub const DEFAULT_HOST_PORT: &str = "127.0.0.1:8085";

/// `runq emulator` command-line options.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on; clients reach it through `PUBSUB_EMULATOR_HOST=<this>`.
    #[arg(long, env = "RUNQ_EMULATOR_HOST_PORT", default_value = DEFAULT_HOST_PORT)]
    pub host_port: String,
    /// Project whose topics and subscriptions are expected. Informational only: like Google's
    /// emulator, any project in a resource name is accepted.
    #[arg(long, env = "RUNQ_EMULATOR_PROJECT")]
    pub project: Option<String>,
    /// Test clock (not a Pub/Sub option): real seconds per emulated second. `0.01` makes a
    /// 10 s ack deadline last 100 ms, so tests need not sleep through Pub/Sub's minimums.
    #[arg(long, env = "RUNQ_EMULATOR_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// Most push requests in flight per push subscription.
    #[arg(long, default_value_t = EmulatorOptions::DEFAULT_MAX_OUTSTANDING_PUSHES)]
    pub max_outstanding_pushes: usize,
    /// Not a Pub/Sub option: keep topics, subscriptions, unacknowledged messages and the
    /// push-token key in this file (saved every 100 ms when changed and at shutdown; loaded at
    /// start), so a restarted emulator carries on where it stopped.
    #[arg(long, env = "RUNQ_EMULATOR_STATE_FILE")]
    pub state_file: Option<std::path::PathBuf>,
}

/// How an in-process emulator behaves. `Default` is Pub/Sub's behaviour on a real clock.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Test clock, not a Pub/Sub option: real seconds per emulated second (default `1.0`).
    /// Every Pub/Sub duration the emulator waits out (ack deadlines, push timeouts, retry
    /// backoff, retention) is multiplied by it, while the values clients send and read back
    /// keep Pub/Sub's units and limits. `0.01` turns a 10 s ack deadline into 100 ms, so tests
    /// run the real minimums without sleeping through them. Publish times stay wall-clock.
    pub time_scale: f64,
    /// Most push requests in flight per push subscription (Pub/Sub's push flow control). The
    /// window starts small, grows with successes and halves on failures.
    pub max_outstanding_pushes: usize,
    /// Project named in logs and `runq emulator`'s banner. Any project is accepted.
    pub project: Option<String>,
    /// Not a Pub/Sub option: where the state is kept across restarts (see
    /// [`EmulatorArgs::state_file`]); none by default.
    pub state_file: Option<std::path::PathBuf>,
}

impl EmulatorOptions {
    /// Push requests in flight per subscription unless told otherwise.
    pub const DEFAULT_MAX_OUTSTANDING_PUSHES: usize = 100;

    /// Options with the test clock set to `time_scale` real seconds per emulated second.
    pub fn with_time_scale(mut self, time_scale: f64) -> Self {
        self.time_scale = time_scale;
        self
    }
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            max_outstanding_pushes: Self::DEFAULT_MAX_OUTSTANDING_PUSHES,
            project: None,
            state_file: None,
        }
    }
}

/// A running emulator. Dropping it leaves the emulator running until the runtime stops;
/// call [`EmulatorHandle::shutdown`] to stop it (tests do, so ports and tasks are freed).
#[derive(Debug)]
pub struct EmulatorHandle {
    /// Where the listener is bound; the source of every URL we hand out (never `Host`).
    addr: SocketAddr,
    /// Tells the server task to stop accepting and drop every connection and background task.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server task, awaited by `shutdown` so a stopped emulator is really gone.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmulatorHandle {
    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, the value for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port`, what `with_endpoint(...)` of the official clients wants.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of the JWKS that verifies the push tokens this emulator signs.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/oauth2/v3/certs", self.addr)
    }

    /// Stops accepting, closes every connection and stops push delivery.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts the emulator on `listener` and returns at once; it serves until
/// [`EmulatorHandle::shutdown`]. This is what `runq dev` and tests embed.
pub async fn start(listener: tokio::net::TcpListener, opts: EmulatorOptions) -> std::io::Result<EmulatorHandle> {
    // Bounded so scaled durations (at most 31 days) can't overflow.
    if !(opts.time_scale > 0.0 && opts.time_scale <= 1000.0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "time_scale must be greater than 0 and at most 1000",
        ));
    }
    let addr = listener.local_addr()?;
    let state = match &opts.state_file {
        Some(path) => Some(broker::Snapshot::load(path)?),
        None => None,
    };
    let signer = match state.as_ref().and_then(|s| s.key.as_deref()) {
        Some(key) => {
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD.decode(key).map_err(std::io::Error::other)?;
            Arc::new(oidc::Signer::from_der(&der)?)
        }
        None => oidc::Signer::shared().await?,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server::serve(listener, opts, signer, state, stopped));
    Ok(EmulatorHandle { addr, stop: Some(stop), task: Some(task) })
}

/// `runq emulator`: binds, prints the `export PUBSUB_EMULATOR_HOST=...` line to stdout and
/// serves until `shutdown` resolves (the CLI passes Ctrl-C or SIGTERM).
pub async fn run(args: EmulatorArgs, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.host_port).await?;
    let opts = EmulatorOptions {
        time_scale: args.time_scale,
        max_outstanding_pushes: args.max_outstanding_pushes.max(1),
        project: args.project.clone(),
        state_file: args.state_file.clone(),
    };
    let handle = start(listener, opts).await?;
    println!("export PUBSUB_EMULATOR_HOST={}", handle.host());
    tracing::info!(
        host = %handle.host(),
        project = args.project.as_deref().unwrap_or("(any)"),
        jwks = %handle.jwks_url(),
        "Pub/Sub emulator listening"
    );
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

/// Shared by every part of one emulator: the broker and what push delivery needs.
pub(crate) type Shared = Arc<broker::Broker>;

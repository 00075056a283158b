//! One listener, both transports: hyper-util's auto builder speaks HTTP/1.1 or (prior
//! knowledge, plaintext) HTTP/2 per connection; HTTP/2 requests with a gRPC content type go
//! to the gRPC services, everything else to REST. Shutdown drops every connection and task.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, Version, header::CONTENT_TYPE};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::EmulatorOptions;
use super::broker::Broker;
use super::grpc::Grpc;
use super::oidc::Signer;
use super::proto::{publisher_server::PublisherServer, subscriber_server::SubscriberServer};
use super::{push, rest};

/// Largest gRPC message in or out: room for a 10 MB Pub/Sub message plus framing, so an
/// oversized one gets Pub/Sub's INVALID_ARGUMENT rather than a transport error.
const MAX_GRPC_MESSAGE: usize = 32 * 1024 * 1024;

/// Serves until `stopped` fires (or its sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    opts: EmulatorOptions,
    signer: Arc<Signer>,
    state: Option<super::broker::Snapshot>,
    mut stopped: oneshot::Receiver<()>,
) {
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let state_file = opts.state_file.clone();
    let broker = Arc::new(Broker::new(opts, push_tx));
    let mut background = JoinSet::new();
    if let (Some(path), Some(snap)) = (&state_file, &state) {
        if let Err(e) = broker.restore(snap) {
            tracing::error!(error = %e, path = %path.display(), "could not restore the emulator's state");
        }
        background.spawn(broker.clone().keep_saving(path.clone(), signer.der().to_vec()));
    }
    background.spawn(broker.clone().run_reaper());
    background.spawn(push::run_manager(broker.clone(), signer.clone(), push_rx));

    let rest = rest::router(broker.clone(), signer.clone());
    let svc = Grpc { broker: broker.clone() };
    let grpc = tonic::service::Routes::new(
        PublisherServer::new(svc.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE),
    )
    .add_service(
        SubscriberServer::new(svc)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE),
    )
    .into_axum_router();

    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, rest.clone(), grpc.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    background.abort_all();
    while conns.join_next().await.is_some() {}
    while background.join_next().await.is_some() {}
    if let Some(path) = &state_file
        && let Err(e) = broker.snapshot(signer.der()).save(path)
    {
        tracing::warn!(error = %e, path = %path.display(), "could not save the emulator's state");
    }
}

/// Serves one connection, routing each request by HTTP version and content type.
async fn connection(stream: TcpStream, rest: Router, grpc: Router) {
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let is_grpc = req.version() == Version::HTTP_2
            && req.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let router = if is_grpc { grpc.clone() } else { rest.clone() };
        router.oneshot(req)
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(1000)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(1024 * 1024);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
        tracing::debug!(error = %e, "emulator connection ended");
    }
}

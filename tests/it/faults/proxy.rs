//! A fault-injecting HTTP proxy between the emulator's push and one worker. It forwards each
//! push to the worker unless a fault is armed; each armed fault hits exactly one push:
//! - `dup`: forwards the push twice at once (a duplicate delivery racing the original);
//! - `delay`: forwards it, then holds the answer past the ack deadline (a push timeout: the
//!   outcome is recorded but the emulator redelivers);
//! - `cut`: drops the connection to the worker mid-request (Pub/Sub closing a push at its
//!   deadline) and answers 502;
//! - `err500`: answers 500 without forwarding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Dup,
    Delay,
    Cut,
    Err500,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Dup, Fault::Delay, Fault::Cut, Fault::Err500];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Dup => "push_duplicate",
            Fault::Delay => "push_timeout",
            Fault::Cut => "push_cut",
            Fault::Err500 => "push_500",
        }
    }
}

#[derive(Default)]
struct State {
    /// Faults armed, taken one per push in order.
    armed: std::sync::Mutex<std::collections::VecDeque<Fault>>,
    /// Faults that hit a push, by kind (order of `Fault::ALL`).
    hit: [AtomicU64; 4],
}

impl State {
    fn hit(&self, f: Fault) {
        let i = Fault::ALL.iter().position(|x| *x == f).unwrap();
        self.hit[i].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target` (the worker's `/push` URL). `hold` is
    /// how long a `delay` fault holds the answer (past the real ack deadline).
    pub async fn start(target: String, hold: Duration) -> Proxy {
        let state = Arc::new(State::default());
        let http = reqwest::Client::builder().http1_only().pool_max_idle_per_host(64).build().unwrap();
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (state, http, target) = (shared.clone(), http.clone(), target.clone());
            async move { handle(state, http, target, hold, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy { url, state }
    }

    pub fn arm(&self, fault: Fault, times: usize) {
        let mut armed = self.state.armed.lock().unwrap();
        armed.extend(std::iter::repeat_n(fault, times));
    }

    /// Faults that hit a push so far, by kind.
    pub fn hits(&self) -> Vec<(Fault, u64)> {
        Fault::ALL.iter().enumerate().map(|(i, f)| (*f, self.state.hit[i].load(Ordering::Relaxed))).collect()
    }

    /// Armed faults no push has taken yet (dropped at the end: they never happened).
    pub fn disarm(&self) -> usize {
        let mut armed = self.state.armed.lock().unwrap();
        let n = armed.len();
        armed.clear();
        n
    }
}

async fn forward(http: &reqwest::Client, target: &str, headers: &HeaderMap, body: Bytes) -> StatusCode {
    let mut req = http.post(target).body(body);
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    match req.send().await {
        Ok(r) => StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

async fn handle(
    state: Arc<State>,
    http: reqwest::Client,
    target: String,
    hold: Duration,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fault = state.armed.lock().unwrap().pop_front();
    if let Some(f) = fault.filter(|f| *f != Fault::Cut) {
        state.hit(f);
    }
    match fault {
        None => forward(&http, &target, &headers, body).await,
        Some(Fault::Err500) => StatusCode::INTERNAL_SERVER_ERROR,
        Some(Fault::Dup) => {
            // Both copies run to completion on their own, whatever the emulator does.
            let copy = {
                let (http, target, headers, body) = (http.clone(), target.clone(), headers.clone(), body.clone());
                tokio::spawn(async move { forward(&http, &target, &headers, body).await })
            };
            let first = tokio::spawn(async move { forward(&http, &target, &headers, body).await });
            let status = first.await.unwrap_or(StatusCode::BAD_GATEWAY);
            drop(copy);
            status
        }
        Some(Fault::Delay) => {
            let run = tokio::spawn(async move { forward(&http, &target, &headers, body).await });
            let status = run.await.unwrap_or(StatusCode::BAD_GATEWAY);
            // The emulator gives up on this push at its ack deadline and redelivers.
            tokio::time::sleep(hold).await;
            status
        }
        Some(Fault::Cut) => {
            let cut_after = Duration::from_millis(20 + rand::random::<u64>() % 400);
            match tokio::time::timeout(cut_after, forward(&http, &target, &headers, body)).await {
                Ok(status) => status,
                Err(_) => {
                    // Counted only when it did cut a request in flight.
                    state.hit(Fault::Cut);
                    StatusCode::BAD_GATEWAY
                }
            }
        }
    }
}

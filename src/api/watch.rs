//! Job change notifications for status long-polls: one `LISTEN runq_jobs` connection per API
//! process, fanned out to the waiting requests through a broadcast channel.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The Postgres channel the `jobs_notify` trigger notifies.
pub const CHANNEL: &str = "runq_jobs";

/// A change notification: a job id, or `None` when notifications may have been missed (the
/// listener reconnected), so every waiter should look again.
pub type Change = Option<Uuid>;

/// Subscribes requests to job changes. Cheap to clone.
#[derive(Clone)]
pub struct Watcher {
    tx: broadcast::Sender<Change>,
}

impl Watcher {
    /// Starts the listener task on a connection of its own to `pool`'s server (not one of
    /// `pool`'s, which the requests need).
    pub fn start(pool: PgPool) -> Self {
        let pool = crate::store::listener_pool(&pool);
        let (tx, _) = broadcast::channel(4096);
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                match listen(&pool, &sender).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "job change listener failed; reconnecting");
                        let _ = sender.send(None);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Self { tx }
    }

    /// A receiver of the changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

async fn listen(pool: &PgPool, tx: &broadcast::Sender<Change>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything that happened while we were (re)connecting is unknown: wake everyone once.
    let _ = tx.send(None);
    loop {
        // `None`: the connection dropped (the next call reconnects) and notifications may
        // have been lost while it was down, so every waiter looks again.
        let change = listener.try_recv().await?.map(|n| Uuid::parse_str(n.payload()).ok());
        // No receivers is fine: nobody is waiting right now.
        let _ = tx.send(change.flatten());
    }
}

/// Waits until one of `ids` may have changed (a notification of one of them, a possible miss)
/// or `until` passes. Returns false on timeout.
pub async fn changed_any(
    rx: &mut broadcast::Receiver<Change>,
    ids: &std::collections::HashSet<Uuid>,
    until: tokio::time::Instant,
) -> bool {
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => return false,
            Ok(Ok(Some(changed))) if !ids.contains(&changed) => continue,
            Ok(Ok(_)) => return true,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return true,
            Ok(Err(broadcast::error::RecvError::Closed)) => return false,
        }
    }
}

/// Waits until `id` may have changed (its notification, a possible miss) or `until` passes.
/// Returns false on timeout.
pub async fn changed(rx: &mut broadcast::Receiver<Change>, id: Uuid, until: tokio::time::Instant) -> bool {
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => return false,
            Ok(Ok(Some(changed))) if changed != id => continue,
            Ok(Ok(_)) => return true,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return true,
            Ok(Err(broadcast::error::RecvError::Closed)) => return false,
        }
    }
}

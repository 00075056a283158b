//! The process-wide lease keeper: one task heartbeats every live run of this process in one
//! statement on its own (relaxed) pool, so a busy function can't starve its own lease, and tells
//! each run when its job was cancelled or its claim was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::store;

/// What the keeper has learned about a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSignal {
    /// A client asked to cancel the job.
    pub cancel_requested: bool,
    /// The claim no longer holds (reaped or re-claimed): stop, and record nothing.
    pub lost: bool,
}

struct Held {
    claim_id: Uuid,
    signal: watch::Sender<RunSignal>,
}

/// Runs of this process and their claims. Cheap to clone.
#[derive(Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<HashMap<Uuid, Held>>>,
}

/// Removes a run from the keeper when its execution ends, however it ends.
pub struct LeaseGuard {
    leases: Leases,
    id: Uuid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.leases.held.lock().expect("leases lock").remove(&self.id);
    }
}

impl Leases {
    /// Starts keeping `id`'s lease; the receiver reports cancel requests and a lost claim.
    pub fn hold(&self, id: Uuid, claim_id: Uuid) -> (LeaseGuard, watch::Receiver<RunSignal>) {
        let (tx, rx) = watch::channel(RunSignal::default());
        self.held.lock().expect("leases lock").insert(id, Held { claim_id, signal: tx });
        (LeaseGuard { leases: self.clone(), id }, rx)
    }

    /// The runs held now, as `(job id, claim id)`.
    pub fn snapshot(&self) -> Vec<(Uuid, Uuid)> {
        self.held.lock().expect("leases lock").iter().map(|(id, h)| (*id, h.claim_id)).collect()
    }

    /// How many runs are live.
    pub fn len(&self) -> usize {
        self.held.lock().expect("leases lock").len()
    }

    /// True when no run is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells a run what a progress write or a heartbeat learned.
    pub fn signal(&self, id: Uuid, signal: RunSignal) {
        if let Some(h) = self.held.lock().expect("leases lock").get(&id) {
            h.signal.send_if_modified(|s| {
                let changed = *s != signal;
                *s = signal;
                changed
            });
        }
    }

    /// One heartbeat of every held run.
    pub async fn beat(&self, relaxed: &PgPool, lease: Duration) -> Result<(), store::StoreError> {
        let held = self.snapshot();
        if held.is_empty() {
            return Ok(());
        }
        let alive: HashMap<Uuid, bool> = store::heartbeat(relaxed, &held, lease).await?.into_iter().collect();
        for (id, _) in held {
            let signal = match alive.get(&id) {
                Some(&cancel_requested) => RunSignal { cancel_requested, lost: false },
                None => RunSignal { cancel_requested: false, lost: true },
            };
            self.signal(id, signal);
        }
        Ok(())
    }

    /// Heartbeats every `lease / 3` until the process ends.
    pub fn spawn_keeper(&self, relaxed: PgPool, lease: Duration) -> tokio::task::JoinHandle<()> {
        let leases = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = leases.beat(&relaxed, lease).await {
                    // Leases outlast a few missed beats; the reaper only acts once one expires.
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        })
    }
}

/// Runs detached from their push request, so shutdown can wait for them to finish or release.
#[derive(Clone, Default)]
pub struct Background {
    count: Arc<std::sync::atomic::AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

/// Held by a detached run while it lives.
pub struct BackgroundGuard(Background);

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Background {
    /// Counts a detached run until the guard drops.
    pub fn enter(&self) -> BackgroundGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        BackgroundGuard(self.clone())
    }

    /// Detached runs alive now.
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// True when no detached run is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no detached run is alive.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

//! The process-wide lease keeper: one task heartbeats every live run of this process in one
//! statement on its own (relaxed) pool, so a busy function can't starve its own lease, and tells
//! each run when its job was cancelled or its claim was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::store;

/// What the keeper has learned about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSignal {
    /// A client asked to cancel the job.
    pub cancel_requested: bool,
    /// The claim no longer holds (reaped or re-claimed): stop, and record nothing.
    pub lost: bool,
    /// When the last renewal that succeeded was sent (the claim counts as one): the database
    /// extended the lease from a moment after this, so the lease lasts at least until
    /// `renewed_at + lease` by this process's clock.
    pub renewed_at: Instant,
}

impl RunSignal {
    /// A run whose lease was just taken at `at`.
    pub fn claimed(at: Instant) -> Self {
        Self { cancel_requested: false, lost: false, renewed_at: at }
    }
}

struct Held {
    job_id: Uuid,
    signal: watch::Sender<RunSignal>,
}

/// Runs of this process, keyed by claim: one job can have two runs here at once (a run whose
/// lease lapsed, still stopping, and the run that re-claimed it after the reaper), and each
/// must keep its own lease and signals. Cheap to clone.
#[derive(Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<Runs>>,
    /// Woken whenever a run ends (its guard drops), for [`Leases::supersede`].
    ended: Arc<tokio::sync::Notify>,
}

/// The runs by claim, and cancels that arrived for a claim before its run was held (the
/// notification can beat the claim's caller to [`Leases::hold`]). One lock for both, so a
/// cancel is either delivered to the run or found by its `hold`.
#[derive(Default)]
struct Runs {
    by_claim: HashMap<Uuid, Held>,
    early_cancels: HashMap<Uuid, Instant>,
}

/// How long a cancel for a claim not (yet) held here is kept for its `hold`: the claim's run
/// starts within moments of it, or on another process (which hears the same notification).
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(60);

/// Removes a run from the keeper when its execution ends, however it ends.
pub struct LeaseGuard {
    leases: Leases,
    claim_id: Uuid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.leases.held.lock().expect("leases lock").by_claim.remove(&self.claim_id);
        self.leases.ended.notify_waiters();
    }
}

impl Leases {
    /// Starts keeping the lease of claim `claim_id` of job `job_id`, taken at `claimed_at`; the
    /// receiver reports cancel requests, renewals and a lost claim.
    pub fn hold(&self, job_id: Uuid, claim_id: Uuid, claimed_at: Instant) -> (LeaseGuard, watch::Receiver<RunSignal>) {
        let mut runs = self.held.lock().expect("leases lock");
        let cancelled = runs.early_cancels.remove(&claim_id).is_some();
        let (tx, rx) = watch::channel(RunSignal { cancel_requested: cancelled, ..RunSignal::claimed(claimed_at) });
        runs.by_claim.insert(claim_id, Held { job_id, signal: tx });
        (LeaseGuard { leases: self.clone(), claim_id }, rx)
    }

    /// Before claim `claim_id` of job `job_id` starts its run here: any older run of the same
    /// job still held by this process has lost its claim (a job has one claim at a time, and this
    /// is it), so it is told so at once, and this waits until it has ended, at most `bound`. A
    /// process frozen past its lease (SIGSTOP, a throttled CPU) can be handed the same job again
    /// the moment it wakes, before the old run's own timers fire; without this the new run would
    /// start beside the old one for a moment. After `bound` (the old run is stuck in blocking
    /// code that ignores its cancel) the new run starts anyway, with a warning.
    pub async fn supersede(&self, job_id: Uuid, claim_id: Uuid, bound: Duration) {
        let give_up = Instant::now() + bound;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let older: Vec<Uuid> = {
                let runs = self.held.lock().expect("leases lock");
                runs.by_claim.iter().filter(|(c, h)| h.job_id == job_id && **c != claim_id).map(|(c, _)| *c).collect()
            };
            if older.is_empty() {
                return;
            }
            for claim in &older {
                self.lost(*claim);
            }
            if tokio::time::timeout_at(give_up, ended).await.is_err() {
                tracing::warn!(job_id = %job_id, older = older.len(), "an older run of this job has not stopped; starting the new one anyway");
                return;
            }
        }
    }

    /// The runs held now, as `(job id, claim id)`.
    pub fn snapshot(&self) -> Vec<(Uuid, Uuid)> {
        self.held.lock().expect("leases lock").by_claim.iter().map(|(claim, h)| (h.job_id, *claim)).collect()
    }

    /// How many runs are live.
    pub fn len(&self) -> usize {
        self.held.lock().expect("leases lock").by_claim.len()
    }

    /// True when no run is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The claim still holds, as of a renewal sent at `sent` (a heartbeat or a progress write).
    pub fn renewed(&self, claim_id: Uuid, cancel_requested: bool, sent: Instant) {
        self.update(claim_id, |s| {
            s.cancel_requested = cancel_requested;
            s.renewed_at = s.renewed_at.max(sent);
        });
    }

    /// A client asked to cancel the run of claim `claim_id`: it is told at once, or when this
    /// process holds it, if that is soon.
    pub fn cancel_requested(&self, claim_id: Uuid) {
        let mut runs = self.held.lock().expect("leases lock");
        match runs.by_claim.get(&claim_id) {
            Some(h) => {
                h.signal.send_if_modified(|s| !std::mem::replace(&mut s.cancel_requested, true));
            }
            None => {
                let now = Instant::now();
                runs.early_cancels.retain(|_, at| now.duration_since(*at) < EARLY_CANCEL_KEPT);
                runs.early_cancels.insert(claim_id, now);
            }
        }
    }

    /// The claim no longer holds: its run must stop.
    pub fn lost(&self, claim_id: Uuid) {
        self.update(claim_id, |s| s.lost = true);
    }

    fn update(&self, claim_id: Uuid, change: impl FnOnce(&mut RunSignal)) {
        if let Some(h) = self.held.lock().expect("leases lock").by_claim.get(&claim_id) {
            h.signal.send_if_modified(|s| {
                let before = *s;
                change(s);
                *s != before
            });
        }
    }

    /// One heartbeat of every held run.
    pub async fn beat(&self, relaxed: &PgPool, lease: Duration) -> Result<(), store::StoreError> {
        let held = self.snapshot();
        if held.is_empty() {
            return Ok(());
        }
        let sent = Instant::now();
        let alive: HashMap<Uuid, bool> = store::heartbeat(relaxed, &held, lease).await?.into_iter().collect();
        for (_, claim_id) in held {
            match alive.get(&claim_id) {
                Some(&cancel_requested) => self.renewed(claim_id, cancel_requested, sent),
                None => self.lost(claim_id),
            }
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
                // A heartbeat that hangs (Postgres unreachable) must not delay the next one past
                // the lease: give each at most a third of it.
                match tokio::time::timeout(lease / 3, leases.beat(&relaxed, lease)).await {
                    Ok(Ok(())) => {}
                    // Leases outlast a few missed beats; a run whose lease can't be renewed in
                    // time stops by itself (see `run`), before the reaper hands it on.
                    Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                    Err(_) => tracing::warn!("heartbeat timed out"),
                }
            }
        })
    }
}

/// The Postgres channel a running job's cancel request is notified on (the `jobs_notify_cancel`
/// trigger), with `job_id:claim_id` as payload.
pub const CANCEL_CHANNEL: &str = "runq_cancel";

impl Leases {
    /// Listens on [`CANCEL_CHANNEL`] until the process ends and tells the runs of a cancelled
    /// job at once. A notification lost while the listener reconnects costs only time: the next
    /// heartbeat carries the same flag. Its connection is its own (a pool of one beside
    /// `pool`, to the same server), so it never takes a connection the heartbeats need.
    pub fn spawn_cancel_listener(&self, relaxed: &PgPool, lease: Duration) -> tokio::task::JoinHandle<()> {
        let leases = self.clone();
        let relaxed = relaxed.clone();
        let own = store::listener_pool(&relaxed);
        tokio::spawn(async move {
            loop {
                match leases.listen_for_cancels(&own, &relaxed, lease).await {
                    Ok(()) => tracing::warn!("cancel listener lost its connection; listening again"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cancel listener failed; reconnecting (heartbeats still carry cancels)")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn listen_for_cancels(&self, own: &PgPool, relaxed: &PgPool, lease: Duration) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(own).await?;
        listener.listen(CANCEL_CHANNEL).await?;
        // Cancels sent before we listened (runs claimed while the process started, or while
        // the connection was down) were never heard: one heartbeat now reads them all.
        self.catch_up(relaxed, lease).await;
        loop {
            match listener.try_recv().await? {
                Some(n) => {
                    if let Some(claim_id) = n.payload().split_once(':').and_then(|(_, c)| Uuid::parse_str(c).ok()) {
                        self.cancel_requested(claim_id);
                    }
                }
                // The connection dropped, and what is sent until we listen again is lost: start
                // over (listen, then catch up).
                None => return Ok(()),
            }
        }
    }

    async fn catch_up(&self, relaxed: &PgPool, lease: Duration) {
        match tokio::time::timeout(lease / 3, self.beat(relaxed, lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat after (re)listening failed"),
            Err(_) => tracing::warn!("heartbeat after (re)listening timed out"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn two_runs_of_one_job_keep_their_own_lease_and_signals() {
        let leases = Leases::default();
        let job = Uuid::now_v7();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        // Run A's lease lapsed; the reaper and relay handed the job to this process again as B.
        let (guard_a, mut rx_a) = leases.hold(job, a, t0);
        let (guard_b, mut rx_b) = leases.hold(job, b, t0);
        let mut held = leases.snapshot();
        held.sort();
        let mut want = vec![(job, a), (job, b)];
        want.sort();
        assert_eq!(held, want, "both claims are held");

        // A learns it lost its claim; B must not hear of it.
        leases.lost(a);
        assert!(rx_a.has_changed().unwrap() && rx_a.borrow_and_update().lost);
        assert!(!rx_b.has_changed().unwrap());

        // A's run ends: B is still kept (heartbeated), and renewals reach B alone.
        drop(guard_a);
        assert_eq!(leases.snapshot(), vec![(job, b)]);
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        leases.renewed(b, true, t1);
        let s = *rx_b.borrow_and_update();
        assert_eq!((s.lost, s.cancel_requested, s.renewed_at), (false, true, t1));
        // A renewal older than the one recorded doesn't move the lease back.
        leases.renewed(b, true, t0);
        assert_eq!(rx_b.borrow().renewed_at, t1);
        drop(guard_b);
        assert!(leases.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_claim_of_a_job_waits_for_the_older_run_here_to_end() {
        let leases = Leases::default();
        let (job, other_job) = (Uuid::now_v7(), Uuid::now_v7());
        let (old, new, unrelated) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let (old_guard, mut old_rx) = leases.hold(job, old, t0);
        let (_unrelated, unrelated_rx) = leases.hold(other_job, unrelated, t0);
        let waiting = tokio::spawn({
            let leases = leases.clone();
            async move { leases.supersede(job, new, Duration::from_secs(60)).await }
        });
        // The old run hears at once that its claim is gone; another job's run hears nothing.
        old_rx.changed().await.unwrap();
        assert!(old_rx.borrow().lost);
        assert!(!unrelated_rx.has_changed().unwrap());
        // The new run may not start while the old one is held here.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the new run waits for the old one to end");
        let before = Instant::now();
        drop(old_guard);
        waiting.await.unwrap();
        assert_eq!(Instant::now(), before, "it starts the moment the old run ends");

        // A run that never ends holds the new one back for the bound only.
        let (_stuck, _rx) = leases.hold(job, old, t0);
        let start = Instant::now();
        leases.supersede(job, new, Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Nothing older held: it returns at once.
        let start = Instant::now();
        leases.supersede(other_job, unrelated, Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_notification_reaches_its_run_even_one_not_held_yet() {
        let leases = Leases::default();
        let job = Uuid::now_v7();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let (_a, mut rx_a) = leases.hold(job, a, t0);
        let (_b, rx_b) = leases.hold(job, b, t0);
        leases.cancel_requested(a);
        assert!(rx_a.has_changed().unwrap() && rx_a.borrow_and_update().cancel_requested);
        assert!(!rx_b.has_changed().unwrap(), "another claim's run hears nothing");
        // A second notification of the same cancel changes nothing.
        leases.cancel_requested(a);
        assert!(!rx_a.has_changed().unwrap());
        // The notification beat the claim's caller to `hold`: the run starts cancelled.
        leases.cancel_requested(c);
        let (_c, rx_c) = leases.hold(job, c, t0);
        assert!(rx_c.borrow().cancel_requested);
        // ... once: a later hold of that claim (there is none) or of another starts clean.
        let (_d, rx_d) = leases.hold(job, Uuid::new_v4(), t0);
        assert!(!rx_d.borrow().cancel_requested);
        // Early cancels don't pile up: one older than the keep time is dropped with the next.
        leases.cancel_requested(Uuid::new_v4());
        tokio::time::advance(EARLY_CANCEL_KEPT).await;
        leases.cancel_requested(Uuid::new_v4());
        assert_eq!(leases.held.lock().unwrap().early_cancels.len(), 1);
    }
}

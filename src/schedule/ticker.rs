//! The local ticker of `runq dev`: fires each schedule's slots as they pass, catching up one
//! missed slot after a pause (a laptop asleep), never a backlog of them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Schedule, Schedules};

/// The slot to fire now for a schedule last fired at `last` (or started then): the latest slot
/// in `(last, now]`. Slots missed before it are skipped.
pub fn due_slot(schedule: &Schedule, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.slot_at_or_before(now).filter(|slot| *slot > last)
}

/// Remembers, per schedule, the last slot fired.
#[derive(Debug, Clone)]
pub struct Ticker {
    last: HashMap<String, DateTime<Utc>>,
}

impl Ticker {
    /// A ticker that fires nothing scheduled before `started`.
    pub fn new(schedules: &Schedules, started: DateTime<Utc>) -> Self {
        Self { last: schedules.iter().map(|s| (s.name.clone(), started)).collect() }
    }

    /// The `(schedule, slot)` pairs due at `now`, marking them fired.
    pub fn due(&mut self, schedules: &Schedules, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let mut due = Vec::new();
        for s in schedules.iter() {
            let last = self.last.entry(s.name.clone()).or_insert(now);
            if let Some(slot) = due_slot(s, *last, now) {
                *last = slot;
                due.push((s.name.clone(), slot));
            }
        }
        due
    }
}

/// Runs the schedules in this process, as Cloud Scheduler would over HTTP: every second, fires
/// each schedule's due slot through `runner` (the same handler `/internal/schedules/{name}`
/// calls), and sweeps every `sweep_every` (so delays and retries start within about that).
/// Returns when `stop` turns true.
pub async fn run_locally(
    runner: super::Runner,
    schedules: std::sync::Arc<Schedules>,
    sweep_every: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::time::interval;
    let sweeps = {
        let (runner, mut stop) = (runner.clone(), stop.clone());
        async move {
            let mut wait = std::time::Duration::ZERO;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let (dispatcher, storage) = (runner.dispatcher.as_ref(), runner.storage.as_deref());
                if let Err(e) =
                    crate::maintenance::sweep_once(&runner.pool, dispatcher, storage, runner.redispatch_after).await
                {
                    tracing::warn!(error = %e, "sweep failed");
                }
                wait = crate::maintenance::until_next_pass(&runner.pool, sweep_every).await;
            }
        }
    };
    let firings = async move {
        let mut stop = stop;
        let mut ticker = Ticker::new(&schedules, Utc::now());
        let mut tick = interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            for (name, slot) in ticker.due(&schedules, Utc::now()) {
                let (runner, schedules) = (runner.clone(), schedules.clone());
                tokio::spawn(async move {
                    let Some(schedule) = schedules.get(&name) else { return };
                    if let Err(e) = runner.fire(schedule, slot).await {
                        tracing::warn!(schedule = %name, error = %e, "schedule firing failed");
                    }
                });
            }
        }
    };
    tokio::join!(sweeps, firings);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Action, SWEEP};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fires_each_slot_once_and_catches_up_one_after_a_pause() {
        let mut schedules = Schedules { all: Vec::new() };
        schedules.add(Schedule::new("five", "*/5 * * * *", "Etc/UTC", Action::Sweep).unwrap()).unwrap();
        let mut ticker = Ticker::new(&schedules, utc("2026-11-22T10:02:00Z"));
        // Nothing before the first slot after start.
        assert!(ticker.due(&schedules, utc("2026-11-22T10:04:59Z")).is_empty());
        // The 10:05 slot, once, however often the clock ticks past it.
        assert_eq!(
            ticker.due(&schedules, utc("2026-11-22T10:05:00Z")),
            vec![("five".into(), utc("2026-11-22T10:05:00Z"))]
        );
        assert!(ticker.due(&schedules, utc("2026-11-22T10:05:01Z")).is_empty());
        assert!(ticker.due(&schedules, utc("2026-11-22T10:09:59Z")).is_empty());
        // Asleep from 10:06 to 11:02: twelve slots missed, one (the latest, 11:00) fired.
        assert_eq!(
            ticker.due(&schedules, utc("2026-11-22T11:02:30Z")),
            vec![("five".into(), utc("2026-11-22T11:00:00Z"))]
        );
        assert!(ticker.due(&schedules, utc("2026-11-22T11:04:00Z")).is_empty());
        assert_eq!(ticker.due(&schedules, utc("2026-11-22T11:05:00Z")).len(), 1);
    }

    #[test]
    fn every_schedule_is_tracked_separately() {
        let schedules = Schedules::builtin();
        let mut ticker = Ticker::new(&schedules, utc("2026-11-22T03:16:30Z"));
        let due = ticker.due(&schedules, utc("2026-11-22T03:17:00Z"));
        assert_eq!(due.len(), 2, "sweep and cleanup both have a 03:17 slot: {due:?}");
        assert!(due.iter().any(|(n, _)| n == SWEEP));
        assert_eq!(ticker.due(&schedules, utc("2026-11-22T03:18:00Z")).len(), 1, "only the sweep");
    }
}

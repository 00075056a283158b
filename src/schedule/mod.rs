//! Schedules: periodic jobs declared in code (the celery-beat replacement), fired by Cloud
//! Scheduler through `POST /internal/schedules/{name}` in production and by a local ticker in
//! `runq dev`, each scheduled time running once however often it is fired.

mod fire;
mod ticker;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Serialize;
use serde_json::value::RawValue;

pub use fire::{DEFAULT_SWEEP_EVERY, DEFAULT_SWEEP_WINDOW, FireError, Fired, Runner};
pub use ticker::{Ticker, due_slot, run_locally};

use crate::function::Registry;
use crate::job::Priority;
use crate::store::JobSpec;
use crate::submit::{self, Invalid, Submission};

/// Name of the built-in schedule that runs the relay and the reaper.
pub const SWEEP: &str = "runq.sweep";
/// Name of the built-in schedule that deletes finished jobs past their retention.
pub const CLEANUP: &str = "runq.cleanup";

/// What a schedule does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submits a job of `function` with `args` (checked against the function at start-up).
    Submit {
        function: String,
        args: serde_json::Value,
        priority: Priority,
    },
    /// Submits a workflow: the template `workflow` with `args` (checked at start-up).
    Workflow {
        workflow: String,
        args: serde_json::Value,
    },
    /// runq's own maintenance, run inline in the handler (so it works even when the queues don't).
    Sweep,
    Cleanup,
}

/// A periodic job: a 5-field cron (the form Cloud Scheduler accepts) in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The expression as declared, e.g. `*/5 * * * *`.
    pub cron: String,
    parsed: Cron,
    pub time_zone: Tz,
    pub action: Action,
    /// A submitting schedule's jobs are unique ([`Schedule::unique`]): a firing while the last
    /// firing's job is still queued, retrying or running submits nothing and answers with it.
    pub unique: bool,
}

/// A schedule that can't be declared, naming it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("schedule `{name}`: invalid cron {cron:?}: {reason}")]
    Cron { name: String, cron: String, reason: String },
    #[error("schedule `{name}`: unknown time zone {tz:?} (use an IANA name like Europe/Paris or Etc/UTC)")]
    TimeZone { name: String, tz: String },
    #[error("schedule `{name}`: the name must be 1-100 characters of a-z, 0-9, '-', '_', '.'")]
    Name { name: String },
    #[error("schedule `{name}` is declared twice")]
    Duplicate { name: String },
    #[error("schedule `{name}`: {reason}")]
    Target { name: String, reason: String },
}

fn parse_cron(name: &str, cron: &str) -> Result<Cron, ScheduleError> {
    let bad = |reason: String| ScheduleError::Cron { name: name.into(), cron: cron.into(), reason };
    // Cloud Scheduler takes unix-cron: exactly five fields, no seconds, no years, no @nicknames.
    let fields = cron.split_whitespace().count();
    if fields != 5 {
        return Err(bad(format!("expected 5 fields (minute hour day-of-month month day-of-week), found {fields}")));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| bad(e.to_string()))
}

impl Schedule {
    /// Declares a schedule, checking its name, cron and time zone.
    pub fn new(name: &str, cron: &str, time_zone: &str, action: Action) -> Result<Self, ScheduleError> {
        let valid = !name.is_empty()
            && name.len() <= 100
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid {
            return Err(ScheduleError::Name { name: name.into() });
        }
        let parsed = parse_cron(name, cron)?;
        let time_zone =
            Tz::from_str(time_zone).map_err(|_| ScheduleError::TimeZone { name: name.into(), tz: time_zone.into() })?;
        Ok(Self { name: name.into(), cron: cron.into(), parsed, time_zone, action, unique: false })
    }

    /// This schedule with unique jobs: a firing while the job of an earlier firing is still live
    /// (queued, retrying or running: a slow run, a backlog, an outage) doesn't pile another one
    /// up; it answers with the live job. The key is [`Schedule::unique_key`].
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// The unique key of this schedule's jobs, when it has unique jobs: `schedule:{name}` (keys are
    /// per owner, and the schedule's jobs have an owner of their own, [`Schedule::owner`]).
    pub fn unique_key(&self) -> Option<String> {
        self.unique.then(|| format!("schedule:{}", self.name))
    }

    /// The latest scheduled time at or before `now` (what a firing without a schedule-time
    /// header stands for).
    pub fn slot_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.time_zone);
        self.parsed.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.time_zone);
        self.parsed.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The idempotency key of the job for scheduled time `at`: the UTC instant, so a retried
    /// or doubled firing finds the same job.
    pub fn idempotency_key(&self, at: DateTime<Utc>) -> String {
        format!("schedule:{}:{}", self.name, at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    /// The owner of the jobs this schedule submits.
    pub fn owner(&self) -> String {
        format!("schedule:{}", self.name)
    }
}

/// The schedules of an [`crate::App`]: the built-ins and the user's.
#[derive(Debug, Clone)]
pub struct Schedules {
    all: Vec<Schedule>,
}

impl Default for Schedules {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Schedules {
    /// `runq.sweep` every minute and `runq.cleanup` daily at 03:17 UTC.
    pub fn builtin() -> Self {
        let sweep = Schedule::new(SWEEP, "* * * * *", "Etc/UTC", Action::Sweep).expect("valid builtin");
        let cleanup = Schedule::new(CLEANUP, "17 3 * * *", "Etc/UTC", Action::Cleanup).expect("valid builtin");
        Self { all: vec![sweep, cleanup] }
    }

    /// Adds a schedule; names are unique.
    pub fn add(&mut self, schedule: Schedule) -> Result<(), ScheduleError> {
        if self.get(&schedule.name).is_some() {
            return Err(ScheduleError::Duplicate { name: schedule.name });
        }
        self.all.push(schedule);
        Ok(())
    }

    /// The schedule called `name`.
    pub fn get(&self, name: &str) -> Option<&Schedule> {
        self.all.iter().find(|s| s.name == name)
    }

    /// Every schedule, built-ins first.
    pub fn iter(&self) -> impl Iterator<Item = &Schedule> {
        self.all.iter()
    }

    /// Checks every submitting schedule's job as its firing will ([`submit::validate`]), so a bad
    /// declaration stops the start rather than every firing.
    pub fn check(&self, registry: &Registry) -> Result<(), ScheduleError> {
        for s in &self.all {
            if let Action::Submit { function, args, priority } = &s.action {
                let target = |reason: String| ScheduleError::Target { name: s.name.clone(), reason };
                let raw = serde_json::value::to_raw_value(args).map_err(|e| target(e.to_string()))?;
                let key = s.unique_key();
                submit_spec(registry, &s.owner(), function, &raw, *priority, key.as_deref())
                    .map_err(|e| target(e.to_string()))?;
            }
            if let Action::Workflow { workflow, args } = &s.action {
                let target = |reason: String| ScheduleError::Target { name: s.name.clone(), reason };
                let spec = registry
                    .workflows()
                    .get(workflow)
                    .ok_or_else(|| target(format!("unknown workflow `{workflow}`")))?;
                crate::submit::plan_workflow(registry, &s.owner(), spec, args).map_err(|e| target(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// The job of a submitting schedule, checked like any submit ([`submit::validate`]; no args size
/// limit: the args are declared in code, not sent in a request).
fn submit_spec<'a>(
    registry: &Registry,
    owner: &'a str,
    function: &'a str,
    args: &'a RawValue,
    priority: Priority,
    unique_key: Option<&'a str>,
) -> Result<JobSpec<'a>, Invalid> {
    submit::validate(
        registry,
        None,
        &Submission { priority: Some(priority.as_str()), unique_key, ..Submission::new(owner, function, args) },
    )
}

/// One line of `runq schedules`.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub next: Vec<DateTime<Utc>>,
    pub action: String,
}

/// The schedules with their next `count` fire times after `now`.
pub fn listing(schedules: &Schedules, now: DateTime<Utc>, count: usize) -> Vec<Listing> {
    schedules
        .iter()
        .map(|s| {
            let mut next = Vec::with_capacity(count);
            let mut at = now;
            while next.len() < count {
                match s.next_after(at) {
                    Some(t) => {
                        next.push(t);
                        at = t;
                    }
                    None => break,
                }
            }
            let action = match &s.action {
                Action::Submit { function, priority, .. } if s.unique => {
                    format!("submit {function} ({priority}), unique while live")
                }
                Action::Submit { function, priority, .. } => format!("submit {function} ({priority})"),
                Action::Workflow { workflow, .. } => format!("submit workflow {workflow}"),
                Action::Sweep => "relay + reaper".into(),
                Action::Cleanup => "delete finished jobs past retention".into(),
            };
            Listing { name: s.name.clone(), cron: s.cron.clone(), time_zone: s.time_zone.name().into(), next, action }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn submit() -> Action {
        Action::Submit { function: "noop".into(), args: serde_json::json!({}), priority: Priority::Low }
    }

    #[test]
    fn invalid_declarations_name_the_schedule() {
        for (cron, tz) in
            [("* * * *", "Etc/UTC"), ("0 0 * * * *", "Etc/UTC"), ("61 * * * *", "Etc/UTC"), ("@hourly", "Etc/UTC")]
        {
            let e = Schedule::new("nightly", cron, tz, submit()).unwrap_err();
            assert!(matches!(e, ScheduleError::Cron { .. }), "{cron}: {e}");
            assert!(e.to_string().contains("nightly"));
        }
        let e = Schedule::new("nightly", "0 3 * * *", "Mars/Olympus", submit()).unwrap_err();
        assert_eq!(e, ScheduleError::TimeZone { name: "nightly".into(), tz: "Mars/Olympus".into() });
        assert!(matches!(Schedule::new("Bad Name", "0 3 * * *", "Etc/UTC", submit()), Err(ScheduleError::Name { .. })));
        let mut all = Schedules::builtin();
        assert!(matches!(
            all.add(Schedule::new(SWEEP, "0 3 * * *", "Etc/UTC", submit()).unwrap()),
            Err(ScheduleError::Duplicate { .. })
        ));
    }

    #[test]
    fn slots_in_a_time_zone() {
        let s = Schedule::new("paris", "0 9 * * 1-5", "Europe/Paris", submit()).unwrap();
        // Monday 2026-11-23 09:00 Paris = 08:00 UTC (CET, UTC+1).
        assert_eq!(s.next_after(utc("2026-11-22T12:00:00Z")), Some(utc("2026-11-23T08:00:00Z")));
        assert_eq!(s.slot_at_or_before(utc("2026-11-23T08:00:00Z")), Some(utc("2026-11-23T08:00:00Z")));
        assert_eq!(s.slot_at_or_before(utc("2026-11-23T07:59:59Z")), Some(utc("2026-11-20T08:00:00Z")), "Friday's");
        // In summer (CEST, UTC+2) the same local time is 07:00 UTC.
        assert_eq!(s.next_after(utc("2026-07-05T12:00:00Z")), Some(utc("2026-07-06T07:00:00Z")));
    }

    #[test]
    fn daylight_saving_transitions_fire_once_a_day() {
        let s = Schedule::new("ny", "30 2 * * *", "America/New_York", submit()).unwrap();
        // 2026-03-08: clocks jump 02:00 -> 03:00; 02:30 doesn't exist that day.
        let mut at = utc("2026-03-06T12:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..4 {
            at = s.next_after(at).unwrap();
            fired.push(at);
        }
        assert!(fired.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {fired:?}");
        let days: Vec<_> = fired.iter().map(|t| t.with_timezone(&chrono_tz::America::New_York).date_naive()).collect();
        let mut unique = days.clone();
        unique.dedup();
        assert_eq!(unique.len(), days.len(), "at most once per local day: {fired:?}");
        assert_eq!(fired[0], utc("2026-03-07T07:30:00Z"), "EST: 02:30 = 07:30 UTC");
        assert_eq!(*fired.last().unwrap(), utc("2026-03-10T06:30:00Z"), "EDT: 02:30 = 06:30 UTC");

        // 2026-11-01: 01:30 happens twice (EDT then EST); the schedule fires once that day.
        let s = Schedule::new("ny", "30 1 * * *", "America/New_York", submit()).unwrap();
        let first = s.next_after(utc("2026-11-01T00:00:00Z")).unwrap();
        let second = s.next_after(first).unwrap();
        let day = |t: DateTime<Utc>| t.with_timezone(&chrono_tz::America::New_York).date_naive();
        assert_eq!(day(first), chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!(day(second), chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap());
        assert_eq!(
            second,
            chrono_tz::America::New_York.with_ymd_and_hms(2026, 11, 2, 1, 30, 0).unwrap().with_timezone(&Utc)
        );
    }

    #[test]
    fn unique_schedules_key_their_jobs_by_name() {
        let s = Schedule::new("paris", "0 9 * * *", "Europe/Paris", submit()).unwrap();
        assert_eq!(s.unique_key(), None);
        assert_eq!(s.unique().unique_key().as_deref(), Some("schedule:paris"));
    }

    #[test]
    fn idempotency_keys_use_the_utc_instant() {
        let s = Schedule::new("paris", "0 9 * * *", "Europe/Paris", submit()).unwrap();
        assert_eq!(s.idempotency_key(utc("2026-11-23T08:00:00.250Z")), "schedule:paris:2026-11-23T08:00:00Z");
        assert_eq!(s.owner(), "schedule:paris");
    }
}

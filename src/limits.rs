//! Flow control declared in code: concurrency and rate limits over one function or shared by
//! several, global or per key (the job's owner, or a field of its args), and the decision a
//! limited claim takes under its keys' locks (`store::limits`).
//!
//! A job's limit keys are fixed at submit: `<limit>` for a global limit, `<limit>:<value>` for a
//! keyed one. The values a limit enforces live in Postgres (`limits`), seeded from the
//! declaration and adjustable at run time, so an operator can change them without a deploy.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How far in the past a start may be counted: a held job delivered back this late still
/// starts on the rate's schedule (no start is lost to a slow relay), while a bunch delivered
/// later than this (a sweep that paused) is spread at the rate again.
pub const START_CREDIT: Duration = Duration::from_millis(500);
/// Longest key value taken from a job (an owner or an args field), in bytes.
pub const MAX_KEY_VALUE: usize = 200;
/// The longest a held-back job waits before it is published again for a look, however far its
/// rate slot is: a bound for the cases nothing else wakes it (a lowered rate raised again).
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// Where a keyed limit takes a job's key from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// One key for every job: the limit holds across all of them.
    Global,
    /// The job's owner (the `sub` that submitted it): "at most 2 per customer".
    Owner,
    /// A top-level field of the job's args (a string or a number): "at most 1 per `channel_id`".
    Arg(String),
}

impl KeyBy {
    /// How `limits.key_by` stores it: `global`, `owner`, `arg:<field>`.
    pub fn as_stored(&self) -> String {
        match self {
            KeyBy::Global => "global".into(),
            KeyBy::Owner => "owner".into(),
            KeyBy::Arg(field) => format!("arg:{field}"),
        }
    }
}

/// A limit's values: at most `concurrency` runs at once, at most `rate_per_second` starts a
/// second with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Values {
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<f64>,
    pub burst: u32,
}

impl Values {
    /// Why these values can't be enforced, if they can't.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency.is_none() && self.rate_per_second.is_none() {
            return Err("needs a concurrency, a rate or both".into());
        }
        if let Some(c) = self.concurrency
            && c > 1_000_000
        {
            return Err("concurrency is at most 1000000".into());
        }
        if let Some(r) = self.rate_per_second
            && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
        {
            return Err("rate_per_second must be over 0 and at most 1000000".into());
        }
        if !(1..=1_000_000).contains(&self.burst) {
            return Err("burst must be between 1 and 1000000".into());
        }
        Ok(())
    }
}

/// A declared limit: `Limit::new("youtube").rate(2.0, 2).on(["index_video"])`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: String,
    pub key_by: KeyBy,
    pub values: Values,
    /// The functions whose jobs take a slot of it.
    pub functions: Vec<String>,
}

impl Limit {
    /// A global limit with no values yet: add [`Limit::concurrency`], [`Limit::rate`] or both.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            key_by: KeyBy::Global,
            values: Values { concurrency: None, rate_per_second: None, burst: 1 },
            functions: Vec::new(),
        }
    }

    /// At most `n` runs at once (per key, for a keyed limit).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.values.concurrency = Some(n);
        self
    }

    /// At most `per_second` starts a second (per key), `burst` of them at once after a quiet spell.
    pub fn rate(mut self, per_second: f64, burst: u32) -> Self {
        self.values.rate_per_second = Some(per_second);
        self.values.burst = burst;
        self
    }

    /// One key per owner: each owner gets the limit to itself (fair sharing between owners).
    pub fn per_owner(mut self) -> Self {
        self.key_by = KeyBy::Owner;
        self
    }

    /// One key per value of the args field `field`.
    pub fn per_arg(mut self, field: &str) -> Self {
        self.key_by = KeyBy::Arg(field.into());
        self
    }

    /// The functions it applies to.
    pub fn on<I: IntoIterator<Item = S>, S: Into<String>>(mut self, functions: I) -> Self {
        self.functions.extend(functions.into_iter().map(Into::into));
        self
    }

    /// Why this declaration is wrong, naming the limit.
    pub fn check(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
            && self.name != "pause";
        if !valid_name {
            return Err(format!(
                "limit name {:?} is invalid: use 1-64 characters of a-z, 0-9, '_', '-', '.' (and not `pause`)",
                self.name
            ));
        }
        if let KeyBy::Arg(field) = &self.key_by
            && (field.is_empty() || field.len() > 64)
        {
            return Err(format!("limit `{}`: the args field must be 1-64 characters", self.name));
        }
        if self.functions.is_empty() {
            return Err(format!("limit `{}` applies to no function: add .on([...])", self.name));
        }
        self.values.check().map_err(|e| format!("limit `{}`: {e}", self.name))
    }

    /// This limit's key for a job of `owner` with `args`; `Err` names what is missing.
    pub fn key_for(&self, owner: &str, args: &RawValue) -> Result<String, String> {
        let value = match &self.key_by {
            KeyBy::Global => return Ok(self.name.clone()),
            KeyBy::Owner => owner.to_owned(),
            KeyBy::Arg(field) => {
                let parsed: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(args.get()).map_err(|_| {
                        format!("limit `{}` takes its key from args.{field}: args must be an object", self.name)
                    })?;
                match parsed.get(field) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(format!(
                            "limit `{}` takes its key from args.{field}, which must be a string or a number",
                            self.name
                        ));
                    }
                }
            }
        };
        if value.is_empty() || value.len() > MAX_KEY_VALUE {
            return Err(format!("limit `{}`: the key must be 1 to {MAX_KEY_VALUE} bytes", self.name));
        }
        Ok(format!("{}:{value}", self.name))
    }
}

/// The limit a key belongs to.
pub fn limit_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(name, _)| name)
}

/// One key's state as a claim sees it, under the key's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub key: String,
    pub values: Values,
    /// Runs holding a slot of this key now.
    pub running: i64,
    /// GCRA's theoretical arrival time over starts and reserved starts: a new job is admitted
    /// while it is within `burst - 1` intervals of now, else it reserves the next start.
    pub tat: Option<DateTime<Utc>>,
    /// The same over the starts that happened: whatever the reservations, actual starts never
    /// come faster than the rate (held jobs that come back late, together, are spread again).
    pub started: Option<DateTime<Utc>>,
    /// Where the next late reserved job waits, one interval after the last, so a bunch of them
    /// is spread at the rate instead of coming back at one instant.
    pub next_hold: Option<DateTime<Utc>>,
}

/// How an admitted start moves a key's rate state on.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyUpdate {
    pub key: String,
    /// The new reservation time (`None`: a reserved start, already counted).
    pub tat: Option<DateTime<Utc>>,
    pub started: DateTime<Utc>,
}

/// What a limited claim does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run it; these keys' rate state moves on.
    Admit { updates: Vec<KeyUpdate> },
    /// Hold it back on `key`: until a run of the key ends (`until` is `None`), or until `until`,
    /// a start reserved for it by the rate (`tat` or `next_hold` is then the key's new state).
    Hold {
        key: String,
        until: Option<DateTime<Utc>>,
        tat: Option<DateTime<Utc>>,
        next_hold: Option<DateTime<Utc>>,
        message: String,
    },
}

fn interval(rate: f64) -> chrono::Duration {
    // Rounded up, so the starts never come faster than the rate.
    chrono::Duration::microseconds((1e6 / rate).ceil().max(1.0) as i64)
}

/// Decides a claim against every key of the job at `now` (the database's clock).
///
/// Concurrency first: a full key holds the job until a run of it ends. Then rates, by GCRA: a
/// new job starts while the key's reservations (`tat`) are within `burst - 1` intervals of now;
/// otherwise it is held until the first start the rate has free, which is reserved for it, so
/// held jobs come back one interval apart and nothing returns in a herd. `reserved` names the
/// key a returning job holds a start of: it runs without a new reservation, unless the actual
/// starts (`started`) are ahead of now by more than the burst (held jobs delivered late, all at
/// once, after the sweep paused): then it waits its turn one interval after the last such job.
/// A start is counted at most [`START_CREDIT`] in the past (so a late delivery costs no start),
/// which bounds the starts in any `t` seconds by `burst + rate * (t + START_CREDIT)`.
pub fn decide(now: DateTime<Utc>, keys: &[KeyState], reserved: Option<&str>) -> Decision {
    for k in keys {
        if let Some(c) = k.values.concurrency
            && k.running >= i64::from(c)
        {
            return Decision::Hold {
                key: k.key.clone(),
                until: None,
                tat: None,
                next_hold: None,
                message: format!(
                    "held: limit `{}` allows {c} at once and {} are running; released when one ends",
                    limit_of(&k.key),
                    k.running
                ),
            };
        }
    }
    let mut updates = Vec::new();
    for k in keys {
        let Some(rate) = k.values.rate_per_second else { continue };
        let step = interval(rate);
        let tau = step * (k.values.burst.saturating_sub(1) as i32);
        let credit = now - chrono::Duration::from_std(START_CREDIT).expect("small");
        let started = k.started.map_or(credit, |t| t.max(credit));
        let message = |slot: DateTime<Utc>| {
            format!(
                "held: limit `{}` allows {rate}/s (burst {}); starts at {}",
                limit_of(&k.key),
                k.values.burst,
                slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        };
        if reserved == Some(k.key.as_str()) {
            if started - tau > now {
                let slot = k.next_hold.map_or(started - tau, |n| n.max(started - tau));
                return Decision::Hold {
                    key: k.key.clone(),
                    until: Some(slot),
                    tat: None,
                    next_hold: Some(slot + step),
                    message: message(slot),
                };
            }
            updates.push(KeyUpdate { key: k.key.clone(), tat: None, started: started + step });
            continue;
        }
        let tat = k.tat.map_or(now, |t| t.max(now));
        if tat - tau > now || started - tau > now {
            let slot = (tat - tau).max(started - tau);
            return Decision::Hold {
                key: k.key.clone(),
                until: Some(slot),
                tat: Some(tat.max(started) + step),
                next_hold: None,
                message: message(slot),
            };
        }
        updates.push(KeyUpdate { key: k.key.clone(), tat: Some(tat + step), started: started + step });
    }
    Decision::Admit { updates }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    fn state(key: &str, values: Values) -> KeyState {
        KeyState { key: key.into(), values, running: 0, tat: None, started: None, next_hold: None }
    }

    #[test]
    fn keys_come_from_the_owner_or_an_args_field() {
        let by_owner = Limit::new("per-customer").concurrency(2).per_owner().on(["transcribe"]);
        assert_eq!(by_owner.key_for("alice", &raw("{}")).unwrap(), "per-customer:alice");
        let by_channel = Limit::new("channel").concurrency(1).per_arg("channel_id").on(["index"]);
        assert_eq!(by_channel.key_for("a", &raw(r#"{"channel_id": "UC1"}"#)).unwrap(), "channel:UC1");
        assert_eq!(by_channel.key_for("a", &raw(r#"{"channel_id": 7}"#)).unwrap(), "channel:7");
        for bad in [r#"{}"#, r#"{"channel_id": null}"#, r#"{"channel_id": ""}"#, "[1]"] {
            let e = by_channel.key_for("a", &raw(bad)).unwrap_err();
            assert!(e.contains("channel"), "{bad}: {e}");
        }
        let global = Limit::new("youtube").rate(2.0, 2).on(["index"]);
        assert_eq!(global.key_for("a", &raw("{}")).unwrap(), "youtube");
        assert_eq!(limit_of("channel:UC1:x"), "channel");
        assert_eq!(limit_of("youtube"), "youtube");
    }

    #[test]
    fn declarations_are_checked() {
        assert!(Limit::new("x").on(["f"]).check().unwrap_err().contains("needs a concurrency"));
        assert!(Limit::new("Bad").concurrency(1).on(["f"]).check().is_err());
        assert!(Limit::new("pause").concurrency(1).on(["f"]).check().is_err());
        assert!(Limit::new("x").concurrency(1).check().unwrap_err().contains("no function"));
        assert!(Limit::new("x").rate(0.0, 1).on(["f"]).check().is_err());
        assert!(Limit::new("x").rate(f64::NAN, 1).on(["f"]).check().is_err());
        assert!(Limit::new("x").rate(1.0, 0).on(["f"]).check().is_err());
        assert!(Limit::new("x").concurrency(0).on(["f"]).check().is_ok(), "0 holds every job: a pause by limit");
    }

    #[test]
    fn a_full_key_holds_until_a_run_ends() {
        let values = Values { concurrency: Some(2), rate_per_second: None, burst: 1 };
        let now = Utc::now();
        let mut k = state("per:alice", values);
        k.running = 1;
        assert_eq!(decide(now, std::slice::from_ref(&k), None), Decision::Admit { updates: vec![] });
        k.running = 2;
        match decide(now, &[k], None) {
            Decision::Hold { key, until: None, message, .. } => {
                assert_eq!(key, "per:alice");
                assert!(message.contains("allows 2 at once"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Replays claims through the decision: every job arrives at t0; a held one comes back at
    /// its `until`, late by `late[n]` microseconds (a slow relay; the same lateness for a run of
    /// them is a sweep that paused). Returns the start times.
    fn drive(rate: f64, burst: u32, jobs: usize, late: &[i64]) -> Vec<DateTime<Utc>> {
        let t0 = DateTime::parse_from_rfc3339("2026-12-02T00:00:00Z").unwrap().with_timezone(&Utc);
        let mut key = state("r", Values { concurrency: None, rate_per_second: Some(rate), burst });
        let mut starts = Vec::new();
        let mut pending: Vec<(DateTime<Utc>, bool)> = (0..jobs).map(|_| (t0, false)).collect();
        let mut n = 0;
        while !pending.is_empty() {
            let (at, reserved) = pending.remove(0);
            match decide(at, std::slice::from_ref(&key), reserved.then_some("r")) {
                Decision::Admit { updates } => {
                    if let Some(u) = updates.first() {
                        key.tat = u.tat.or(key.tat);
                        key.started = Some(u.started);
                    }
                    starts.push(at);
                }
                Decision::Hold { until, tat, next_hold, .. } => {
                    key.tat = tat.or(key.tat);
                    key.next_hold = next_hold.or(key.next_hold);
                    let delay = late.get(n % late.len().max(1)).copied().unwrap_or(0);
                    n += 1;
                    pending.push((until.unwrap() + chrono::Duration::microseconds(delay), true));
                    pending.sort_by_key(|p| p.0);
                }
            }
        }
        starts.sort();
        starts
    }

    /// Whether no window of `starts` holds more than `burst + rate * (t + credit)` starts.
    fn within_rate(starts: &[DateTime<Utc>], rate: f64, burst: u32) -> Result<(), String> {
        let jitter = START_CREDIT.as_secs_f64();
        for (i, a) in starts.iter().enumerate() {
            for (j, b) in starts.iter().enumerate().skip(i) {
                let window = (*b - *a).num_microseconds().unwrap() as f64 / 1e6 + jitter;
                let count = (j - i + 1) as f64;
                if count > f64::from(burst) + rate * window + 1e-6 {
                    return Err(format!("{count} starts in {window}s at {rate}/s burst {burst}"));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn held_jobs_are_spread_at_the_rate_after_the_burst() {
        let starts = drive(5.0, 3, 20, &[]);
        assert_eq!(starts.len(), 20);
        assert!(starts[..3].iter().all(|s| *s == starts[0]), "the burst starts at once");
        for w in starts[3..].windows(2) {
            assert_eq!((w[1] - w[0]).num_milliseconds(), 200, "then one every 200 ms: {starts:?}");
        }
    }

    proptest! {
        /// In any window of `t` seconds, no more than `burst + rate * t` starts (GCRA's bound),
        /// and the backlog drains at the rate.
        #[test]
        fn starts_never_exceed_rate_plus_burst(rate in 0.5f64..50.0, burst in 1u32..10, jobs in 1usize..120) {
            let starts = drive(rate, burst, jobs, &[]);
            prop_assert_eq!(starts.len(), jobs);
            prop_assert!(within_rate(&starts, rate, burst).is_ok(), "{:?}", within_rate(&starts, rate, burst));
            if jobs > burst as usize {
                let span = (*starts.last().unwrap() - starts[0]).num_microseconds().unwrap() as f64 / 1e6;
                let expected = (jobs - burst as usize) as f64 / rate;
                prop_assert!((span - expected).abs() <= 1e-3 * jobs as f64, "drained in {span}s, expected {expected}s");
            }
        }

        /// Held jobs that come back late, even all together after a long pause of the sweep,
        /// still never start faster than the rate, and all of them start.
        #[test]
        fn late_returns_never_bunch(late in proptest::collection::vec(0i64..20_000_000, 1..8), jobs in 10usize..80, burst in 1u32..4) {
            let starts = drive(5.0, burst, jobs, &late);
            prop_assert_eq!(starts.len(), jobs);
            prop_assert!(within_rate(&starts, 5.0, burst).is_ok(), "{:?}", within_rate(&starts, 5.0, burst));
        }

        /// Deliveries late by less than the credit, in any order, lose no start: the backlog
        /// drains on the rate's schedule (plus the last delivery's lateness).
        #[test]
        fn jitter_within_the_credit_costs_no_starts(late in proptest::collection::vec(0i64..450_000, 1..10), jobs in 10usize..80) {
            let starts = drive(5.0, 1, jobs, &late);
            let span = (*starts.last().unwrap() - starts[0]).num_microseconds().unwrap() as f64 / 1e6;
            prop_assert!(span <= (jobs - 1) as f64 / 5.0 + 0.45 + 1e-3, "drained in {span}s");
        }
    }

    #[test]
    fn a_paused_sweep_does_not_release_its_backlog_at_once() {
        // Every held job comes back 20 s late (the sweep stopped), as a bunch.
        let starts = drive(5.0, 1, 200, &[20_000_000]);
        assert!(within_rate(&starts, 5.0, 1).is_ok(), "{:?}", within_rate(&starts, 5.0, 1));
    }
}

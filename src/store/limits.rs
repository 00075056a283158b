//! Flow control in Postgres: the limited claim (under its keys' row locks), holds, releases,
//! pauses, and the limits table an operator adjusts at run time.
//!
//! Lock order, everywhere: a claim locks its keys' `limit_keys` rows (sorted) and only then a
//! job row; a run's end (the `jobs_release_slots` trigger) holds its own job row, then locks its
//! keys (sorted) and takes held jobs with `SKIP LOCKED`. Neither waits for the other in a cycle.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Claimed, Publication, StoreError, secs};
use crate::job::Priority;
use crate::limits::{Decision, KeyState, Limit, MAX_HOLD, Values, decide, limit_of};

/// Writes the declared limits: new ones are created, and the values of existing ones follow the
/// declaration unless an operator overrode them ([`set_values`]). Limits no longer declared stay
/// (their keys may be held by queued jobs) and keep being enforced on jobs that carry them.
pub async fn declare(pool: &PgPool, limits: &[Limit]) -> Result<(), StoreError> {
    for l in limits {
        let declared = serde_json::to_value(l.values).expect("values serialize");
        sqlx::query!(
            r#"INSERT INTO limits (name, key_by, functions, concurrency, rate_per_second, burst, declared)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (name) DO UPDATE SET
                  key_by = EXCLUDED.key_by, functions = EXCLUDED.functions, declared = EXCLUDED.declared,
                  concurrency = CASE WHEN limits.overridden_at IS NULL THEN EXCLUDED.concurrency ELSE limits.concurrency END,
                  rate_per_second = CASE WHEN limits.overridden_at IS NULL THEN EXCLUDED.rate_per_second
                                         ELSE limits.rate_per_second END,
                  burst = CASE WHEN limits.overridden_at IS NULL THEN EXCLUDED.burst ELSE limits.burst END,
                  updated_at = now()
               WHERE (limits.key_by, limits.functions, limits.declared)
                     IS DISTINCT FROM (EXCLUDED.key_by, EXCLUDED.functions, EXCLUDED.declared)"#,
            l.name,
            l.key_by.as_stored(),
            &l.functions,
            l.values.concurrency.map(|c| c as i32),
            l.values.rate_per_second,
            l.values.burst as i32,
            declared,
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// What a limited claim came to.
#[derive(Debug)]
pub enum LimitedClaim {
    /// It runs.
    Claimed(Claimed),
    /// Held back (and its push may be acknowledged): on `key`, until `until` or a release.
    Held { key: String, until: Option<DateTime<Utc>>, message: String },
    /// Not claimable after all (claimed by another delivery, cancelled, not due).
    Unclaimable,
}

/// Claims a job that has limit keys: locks the keys, counts their runs, reads their rate state
/// and the limits' current values, then either claims the job (moving the rates on) or holds it
/// back, all in one durable transaction.
pub async fn claim_limited(
    pool: &PgPool,
    id: Uuid,
    keys: &[String],
    worker_id: &str,
    lease: std::time::Duration,
) -> Result<LimitedClaim, StoreError> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let mut tx = pool.begin().await?;
    sqlx::query!("INSERT INTO limit_keys (key) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING", &keys)
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query!(
        r#"SELECT key, tat, started, next_hold FROM limit_keys WHERE key = ANY($1) ORDER BY key FOR UPDATE"#,
        &keys
    )
    .fetch_all(&mut *tx)
    .await?;
    // A new statement after the locks: its snapshot sees every run that ended or started before.
    let now: DateTime<Utc> = sqlx::query_scalar!(r#"SELECT clock_timestamp() AS "now!""#).fetch_one(&mut *tx).await?;
    let names: Vec<String> = keys.iter().map(|k| limit_of(k).to_owned()).collect();
    let limits =
        sqlx::query!(r#"SELECT name, concurrency, rate_per_second, burst FROM limits WHERE name = ANY($1)"#, &names)
            .fetch_all(&mut *tx)
            .await?;
    let running = sqlx::query!(
        r#"SELECT k AS "key!", count(*) AS "running!" FROM jobs, unnest(limit_keys) AS k
           WHERE status = 'running' AND limit_keys && $1 AND k = ANY($1) GROUP BY k"#,
        &keys
    )
    .fetch_all(&mut *tx)
    .await?;
    // A job coming back from a rate's hold holds the start reserved for it then.
    let reserved: Option<String> =
        sqlx::query_scalar!(r#"SELECT held_on FROM jobs WHERE id = $1 AND rate_reserved AND run_after <= now()"#, id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    let states: Vec<KeyState> = rows
        .iter()
        .filter_map(|r| {
            let l = limits.iter().find(|l| l.name == limit_of(&r.key))?;
            Some(KeyState {
                key: r.key.clone(),
                values: Values {
                    concurrency: l.concurrency.map(|c| c.max(0) as u32),
                    rate_per_second: l.rate_per_second,
                    burst: l.burst.max(1) as u32,
                },
                running: running.iter().find(|c| c.key == r.key).map_or(0, |c| c.running),
                tat: r.tat,
                started: r.started,
                next_hold: r.next_hold,
            })
        })
        .collect();
    match decide(now, &states, reserved.as_deref()) {
        Decision::Admit { updates } => {
            let Some(claimed) = claim_in(&mut tx, id, worker_id, lease).await? else {
                return Ok(LimitedClaim::Unclaimable);
            };
            let keys: Vec<String> = updates.iter().map(|u| u.key.clone()).collect();
            let tats: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.tat).collect();
            let started: Vec<DateTime<Utc>> = updates.iter().map(|u| u.started).collect();
            sqlx::query!(
                "UPDATE limit_keys k SET tat = coalesce(t.tat, k.tat), started = t.started
                 FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(key, tat, started)
                 WHERE k.key = t.key",
                &keys,
                &tats as &[Option<DateTime<Utc>>],
                &started,
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(LimitedClaim::Claimed(claimed))
        }
        Decision::Hold { key, until, tat, next_hold, message } => {
            if !hold(&mut tx, id, &key, until, &message).await? {
                return Ok(LimitedClaim::Unclaimable);
            }
            if tat.is_some() || next_hold.is_some() {
                sqlx::query!(
                    "UPDATE limit_keys SET tat = coalesce($2, tat), next_hold = coalesce($3, next_hold) WHERE key = $1",
                    key,
                    tat,
                    next_hold
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(LimitedClaim::Held { key, until, message })
        }
    }
}

/// The claim statement of [`super::claim`], inside a limited claim's transaction: the same
/// guards (and the pause check), for a job with limit keys. Its lease runs from this statement
/// (`clock_timestamp()`), not from the transaction's start: the claim may have waited on its
/// keys' locks behind many others, and a lease spent waiting would lapse as the run begins.
async fn claim_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    worker_id: &str,
    lease: std::time::Duration,
) -> Result<Option<Claimed>, StoreError> {
    let asked_at = tokio::time::Instant::now();
    let row = sqlx::query_as!(
        super::runs::ClaimRow,
        r#"WITH claimed AS (
              UPDATE jobs SET status = 'running', attempt = attempt + 1, claim_id = gen_random_uuid(),
                     worker_id = $2, lease_until = clock_timestamp() + make_interval(secs => $3), started_at = now(),
                     finished_at = NULL, updated_at = now(), held_on = NULL, released_by = NULL,
                     rate_reserved = false, message = CASE WHEN starts_with(message, 'held: ') THEN NULL ELSE message END
              WHERE id = $1 AND status = 'queued' AND run_after <= now() AND NOT cancel_requested
                    AND attempt < max_attempts
                    AND NOT EXISTS (SELECT 1 FROM pauses p
                                    WHERE (p.scope = 'function' AND p.name = jobs.function)
                                       OR (p.scope = 'queue' AND p.name = coalesce(jobs.queue, jobs.priority)))
              RETURNING id, owner, function, args, attempt, max_attempts, claim_id, worker_id, limit_keys, workflow_id),
           run AS (INSERT INTO job_runs (claim_id, job_id, attempt, worker_id)
                   SELECT claim_id, id, attempt, worker_id FROM claimed)
           SELECT id AS "id!", owner AS "owner!", function AS "function!", args AS "args!: Json<Box<RawValue>>",
                  attempt AS "attempt!", max_attempts AS "max_attempts!", claim_id AS "claim_id!", limit_keys,
                  workflow_id
           FROM claimed"#,
        id,
        worker_id,
        secs(lease),
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.claimed(asked_at)))
}

/// Holds a claimable job back on `key` with `message`: until `until`, the start a rate reserved
/// for it (it runs then without asking the rate again), or until a release (a run of the key ending, a resume, a raised limit), looked at again by the relay
/// after [`MAX_HOLD`] at the latest. Undispatched either way, so the relay publishes it when
/// due. `false` when it wasn't claimable.
async fn hold(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    key: &str,
    until: Option<DateTime<Utc>>,
    message: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        r#"UPDATE jobs SET held_on = $2, message = $3,
                  run_after = coalesce($4, now() + make_interval(secs => $5)), rate_reserved = $4 IS NOT NULL,
                  dispatched_at = NULL, released_by = NULL, updated_at = now()
           WHERE id = $1 AND status = 'queued' AND run_after <= now() AND NOT cancel_requested
                 AND attempt < max_attempts"#,
        id,
        key,
        message,
        until,
        secs(MAX_HOLD),
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The pause (`pause:queue:<name>` or `pause:function:<name>`) holding job `id` back, if one
/// does now.
pub async fn pause_of(pool: &PgPool, id: Uuid) -> Result<Option<String>, StoreError> {
    let key = sqlx::query_scalar!(
        r#"SELECT 'pause:' || p.scope || ':' || p.name AS "key!" FROM jobs j JOIN pauses p
             ON (p.scope = 'function' AND p.name = j.function) OR (p.scope = 'queue' AND p.name = coalesce(j.queue, j.priority))
           WHERE j.id = $1 ORDER BY p.scope LIMIT 1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(key)
}

/// Holds a job back on a pause. The pause's row is locked (shared) for the hold, so a resume
/// either sees the held job and releases it, or comes first and there is nothing to hold:
/// `false` then (claim it again).
pub async fn hold_for_pause(pool: &PgPool, id: Uuid, pause: &str) -> Result<bool, StoreError> {
    let Some((scope, name)) = pause.strip_prefix("pause:").and_then(|p| p.split_once(':')) else {
        return Ok(false);
    };
    let mut tx = pool.begin().await?;
    let paused =
        sqlx::query_scalar!(r#"SELECT paused_by FROM pauses WHERE scope = $1 AND name = $2 FOR SHARE"#, scope, name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(by) = paused else {
        return Ok(false);
    };
    let message = format!("held: {scope} `{name}` is paused (by {by}); released when it resumes");
    let held = hold(&mut tx, id, pause, None, &message).await?;
    tx.commit().await?;
    Ok(held)
}

/// The jobs a run's end released (the trigger names the run's job), handed to its worker to
/// publish at once; the relay publishes any it doesn't.
pub async fn take_released(pool: &PgPool, by: Uuid) -> Result<Vec<Publication>, StoreError> {
    let rows = sqlx::query!(
        r#"UPDATE jobs SET released_by = NULL WHERE released_by = $1 AND status = 'queued'
           RETURNING id, attempt, function, priority AS "priority: Priority", queue, trace_context"#,
        by
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Publication {
            id: r.id,
            attempt: r.attempt,
            function: r.function,
            priority: r.priority,
            queue: r.queue,
            trace_context: r.trace_context,
        })
        .collect())
}

/// A paused queue or function.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pause {
    pub scope: String,
    pub name: String,
    pub paused_by: String,
    pub paused_at: DateTime<Utc>,
    /// Queued jobs it holds back now.
    pub held: i64,
}

/// Pauses `scope` (`queue` or `function`) `name`: nothing new of it starts from now on (the
/// claim checks it), running jobs finish. `false` when it was paused already.
pub async fn pause(pool: &PgPool, scope: &str, name: &str, by: &str) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "INSERT INTO pauses (scope, name, paused_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        scope,
        name,
        by
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Resumes a pause and releases every job it held, returned for publishing (undispatched: the
/// relay publishes any the caller doesn't). `None` when it wasn't paused.
pub async fn resume(pool: &PgPool, scope: &str, name: &str) -> Result<Option<Vec<Publication>>, StoreError> {
    let mut tx = pool.begin().await?;
    let gone = sqlx::query!("DELETE FROM pauses WHERE scope = $1 AND name = $2", scope, name).execute(&mut *tx).await?;
    if gone.rows_affected() == 0 {
        return Ok(None);
    }
    // A new statement after the delete's lock: every hold that locked the pause first is visible.
    let key = format!("pause:{scope}:{name}");
    let rows = sqlx::query!(
        r#"UPDATE jobs SET held_on = NULL, dispatched_at = NULL, run_after = now(), updated_at = now()
           WHERE status = 'queued' AND held_on = $1
           RETURNING id, attempt, function, priority AS "priority: Priority", queue, trace_context"#,
        key
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(
        rows.into_iter()
            .map(|r| Publication {
                id: r.id,
                attempt: r.attempt,
                function: r.function,
                priority: r.priority,
                queue: r.queue,
                trace_context: r.trace_context,
            })
            .collect(),
    ))
}

/// Every pause, with the jobs each holds.
pub async fn pauses(pool: &PgPool) -> Result<Vec<Pause>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT p.scope, p.name, p.paused_by, p.paused_at,
                  (SELECT count(*) FROM jobs j WHERE j.status = 'queued'
                     AND j.held_on = 'pause:' || p.scope || ':' || p.name) AS "held!"
           FROM pauses p ORDER BY p.scope, p.name"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Pause { scope: r.scope, name: r.name, paused_by: r.paused_by, paused_at: r.paused_at, held: r.held })
        .collect())
}

/// A limit as an operator sees it: its values now, as declared, and its use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitUsage {
    pub name: String,
    pub key_by: String,
    pub functions: Vec<String>,
    pub concurrency: Option<i32>,
    pub rate_per_second: Option<f64>,
    pub burst: i32,
    /// The values in code.
    pub declared: serde_json::Value,
    /// Who changed the values at run time, and when (`None`: they are the declared ones).
    pub overridden_by: Option<String>,
    pub overridden_at: Option<DateTime<Utc>>,
    /// Runs holding a slot now, over all keys.
    pub running: i64,
    /// Jobs held back on one of its keys now.
    pub held: i64,
    /// The busiest keys: `(key, running, held)`, at most ten.
    pub keys: Vec<(String, i64, i64)>,
}

/// Every limit with its use now.
pub async fn usage(pool: &PgPool) -> Result<Vec<LimitUsage>, StoreError> {
    let limits = sqlx::query!(
        r#"SELECT name, key_by, functions, concurrency, rate_per_second, burst, declared, overridden_by, overridden_at
           FROM limits ORDER BY name"#
    )
    .fetch_all(pool)
    .await?;
    let running = sqlx::query!(
        r#"SELECT k AS "key!", count(*) AS "n!" FROM jobs, unnest(limit_keys) AS k
           WHERE status = 'running' AND limit_keys IS NOT NULL GROUP BY k"#
    )
    .fetch_all(pool)
    .await?;
    let held = sqlx::query!(
        r#"SELECT held_on AS "key!", count(*) AS "n!" FROM jobs
           WHERE status = 'queued' AND held_on IS NOT NULL GROUP BY held_on"#
    )
    .fetch_all(pool)
    .await?;
    Ok(limits
        .into_iter()
        .map(|l| {
            let mut keys: Vec<(String, i64, i64)> = Vec::new();
            for r in running.iter().filter(|r| limit_of(&r.key) == l.name) {
                keys.push((r.key.clone(), r.n, 0));
            }
            for h in held.iter().filter(|h| limit_of(&h.key) == l.name) {
                match keys.iter_mut().find(|k| k.0 == h.key) {
                    Some(k) => k.2 = h.n,
                    None => keys.push((h.key.clone(), 0, h.n)),
                }
            }
            let (running, held) = keys.iter().fold((0, 0), |(r, h), k| (r + k.1, h + k.2));
            keys.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then_with(|| a.0.cmp(&b.0)));
            keys.truncate(10);
            LimitUsage {
                name: l.name,
                key_by: l.key_by,
                functions: l.functions,
                concurrency: l.concurrency,
                rate_per_second: l.rate_per_second,
                burst: l.burst,
                declared: l.declared,
                overridden_by: l.overridden_by,
                overridden_at: l.overridden_at,
                running,
                held,
                keys,
            }
        })
        .collect())
}

/// Sets a limit's values at run time (`by` is recorded), or back to the declared ones when
/// `values` is `None`. Jobs a raised concurrency makes room for are released and returned for
/// publishing (undispatched, as after [`resume`]). `None` when there is no such limit.
pub async fn set_values(
    pool: &PgPool,
    name: &str,
    values: Option<Values>,
    by: &str,
) -> Result<Option<Vec<Publication>>, StoreError> {
    let mut tx = pool.begin().await?;
    let updated = match values {
        Some(v) => sqlx::query_scalar!(
            r#"UPDATE limits SET concurrency = $2, rate_per_second = $3, burst = $4, overridden_by = $5,
                      overridden_at = now(), updated_at = now()
               WHERE name = $1 RETURNING concurrency"#,
            name,
            v.concurrency.map(|c| c as i32),
            v.rate_per_second,
            v.burst as i32,
            by,
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|c| c.is_some()),
        None => sqlx::query_scalar!(
            r#"UPDATE limits SET concurrency = (declared->>'concurrency')::int,
                      rate_per_second = (declared->>'rate_per_second')::float8,
                      burst = (declared->>'burst')::int, overridden_by = NULL, overridden_at = NULL,
                      updated_at = now()
               WHERE name = $1 RETURNING concurrency"#,
            name,
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|c| c.is_some()),
    };
    let Some(_) = updated else {
        return Ok(None);
    };
    let released = release_room(&mut tx, Some(name)).await?;
    tx.commit().await?;
    Ok(Some(released))
}

/// Releases, for every key of limit `only` (of every limit with a concurrency when `None`) that
/// holds jobs back, as many as it has free slots now (all of them once the limit has no
/// concurrency); their claims decide again under the key locks. A run's end releases its
/// key's next job itself (the `jobs_release_slots` trigger): this is for a raised limit, and
/// for the sweep as a backstop.
async fn release_room(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    only: Option<&str>,
) -> Result<Vec<Publication>, StoreError> {
    // Changing a limit gives back the starts its rate reserved: the held jobs decide again
    // (a fresh burst, then new reservations at the new rate).
    if let Some(name) = only {
        sqlx::query!(
            "UPDATE limit_keys SET tat = NULL, next_hold = NULL WHERE key = $1 OR starts_with(key, $1 || ':')",
            name
        )
        .execute(&mut **tx)
        .await?;
    }
    // The distinct keys that hold jobs, one index probe per key (a loose scan of `jobs_held`),
    // however many jobs each holds.
    let keys: Vec<String> = sqlx::query_scalar!(
        r#"WITH RECURSIVE k(key) AS (
              (SELECT held_on FROM jobs WHERE status = 'queued' AND held_on IS NOT NULL ORDER BY held_on LIMIT 1)
              UNION ALL
              SELECT (SELECT held_on FROM jobs WHERE status = 'queued' AND held_on > k.key ORDER BY held_on LIMIT 1)
              FROM k WHERE k.key IS NOT NULL)
           SELECT key AS "key!" FROM k
           WHERE key IS NOT NULL AND NOT starts_with(key, 'pause:')
             AND ($1::text IS NULL OR key = $1 OR starts_with(key, $1 || ':'))"#,
        only
    )
    .fetch_all(&mut **tx)
    .await?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query!("SELECT key FROM limit_keys WHERE key = ANY($1) ORDER BY key FOR UPDATE", &keys)
        .fetch_all(&mut **tx)
        .await?;
    let names: Vec<String> = keys.iter().map(|k| limit_of(k).to_owned()).collect();
    let rows = sqlx::query!(
        r#"WITH held(key, name) AS (SELECT * FROM unnest($1::text[], $2::text[])),
           room AS (SELECT h.key, CASE WHEN l.concurrency IS NULL THEN NULL
                                       ELSE greatest(l.concurrency - (SELECT count(*) FROM jobs r
                                            WHERE r.status = 'running' AND r.limit_keys @> ARRAY[h.key]), 0) END AS n
                    FROM held h JOIN limits l ON l.name = h.name
                    WHERE l.concurrency IS NOT NULL OR $3),
           picked AS (SELECT j.id FROM room, LATERAL (
                         SELECT id FROM jobs WHERE status = 'queued' AND held_on = room.key
                           AND ($3 OR NOT rate_reserved)
                         ORDER BY created_at LIMIT room.n FOR UPDATE SKIP LOCKED) j)
           UPDATE jobs SET held_on = NULL, dispatched_at = NULL, run_after = now(), rate_reserved = false,
                  updated_at = now()
           WHERE id IN (SELECT id FROM picked)
           RETURNING id, attempt, function, priority AS "priority: Priority", queue, trace_context"#,
        &keys,
        &names,
        only.is_some(),
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Publication {
            id: r.id,
            attempt: r.attempt,
            function: r.function,
            priority: r.priority,
            queue: r.queue,
            trace_context: r.trace_context,
        })
        .collect())
}

/// The sweep's backstop: releases what concurrency keys with free slots still hold (a release
/// that found its next job locked, a job cancelled after its release). Returns how many.
pub async fn release_stuck(pool: &PgPool) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let released = release_room(&mut tx, None).await?;
    tx.commit().await?;
    Ok(released.len() as u64)
}

/// How long until the next queued job that isn't due yet becomes due (a rate's slot, a delay),
/// by the database's clock, so the sweep can wake for it rather than at its next pass. On the
/// relay's undispatched index.
pub async fn next_due(pool: &PgPool) -> Result<Option<std::time::Duration>, StoreError> {
    let secs = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM min(run_after) - now())::float8 FROM jobs
           WHERE status = 'queued' AND dispatched_at IS NULL AND run_after > now()"#
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}

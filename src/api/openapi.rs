//! The OpenAPI 3.1 description of the API, served at `/openapi.json`. Kept beside the routes
//! and checked by a test that every route is described.

use serde_json::{Value, json};

use super::jobs::{DEFAULT_PAGE, MAX_IDEMPOTENCY_KEY, MAX_PAGE, MAX_WAIT_SECONDS};
use super::narrowing::MAX_SEARCH_CHARS;
use crate::function::{MAX_ATTEMPTS_LIMIT, Registry};
use crate::submit::{MAX_DEBOUNCE_SECONDS, MAX_DELAY_SECONDS, MAX_UNIQUE_KEY};
use crate::workflow;

/// The shape of a `next_cursor`: base64url (no padding) of a version byte 1 and a job id's 16
/// bytes, so any string it matches is a cursor the API accepts.
pub const CURSOR_PATTERN: &str = "^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$";

/// What a function name may look like ([`Registry::register`]'s rule), for filters that may
/// name a function no longer registered.
const FUNCTION_NAME_PATTERN: &str = "^[a-z0-9_.-]{1,100}$";

/// What a workflow step's name may look like ([`workflow::valid_step_name`]).
const STEP_NAME_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

fn problem(description: &str) -> Value {
    json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

fn job_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } })
}

/// `responses` with the 401 and 503 every authenticated route may answer.
fn auth_errors(mut responses: serde_json::Map<String, Value>) -> Value {
    responses.insert("401".into(), problem("Missing, malformed, expired or wrongly signed bearer token."));
    responses.insert(
        "503".into(),
        problem("Database (or the key set) unreachable; retry after `Retry-After` seconds. Nothing was written."),
    );
    Value::Object(responses)
}

/// A literal JSON object as a map.
fn map(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("literal objects"),
    }
}

/// `POST /queues|functions/{name}/pause|resume`.
fn pause_path(scope: &str, pause: bool) -> Value {
    let (summary, effect) = if pause {
        (
            format!("Pause a {scope} (admins)"),
            "Nothing new of it starts from now on (its jobs are held as they come); submits are accepted; running jobs finish.",
        )
    } else {
        (format!("Resume a paused {scope} (admins)"), "Releases every job the pause held.")
    };
    json!({ "post": {
        "summary": summary, "description": effect,
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": auth_errors(map(json!({
            "200": { "description": "`changed` is false when it was in that state already; `released` counts the jobs a resume let go.",
                     "content": { "application/json": { "schema": { "type": "object", "required": ["scope", "name", "paused", "changed", "released"] } } } },
            "403": problem("Not an admin token."),
            "404": problem(&format!("No such {scope}."))
        })))
    } })
}

/// `?window=` of the dashboard's windowed panels.
fn window_param() -> Value {
    json!({ "name": "window", "in": "query", "schema": { "type": "string", "enum": ["15m", "1h", "24h"], "default": "15m" } })
}

fn id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } })
}

fn traceparent_param() -> Value {
    json!({ "name": "traceparent", "in": "header", "required": false, "schema": { "type": "string" },
            "description": "W3C trace context, stored with the job(s) and passed on to the run. A value that is not a valid level-1 traceparent (55 characters, lowercase hex) is dropped, never an error." })
}

/// The OpenAPI document. The functions `registry` holds are the `function` enum of a submit.
pub fn openapi(registry: &Registry) -> Value {
    let functions: Vec<&str> = registry.names().collect();
    let templates: Vec<&str> = registry.workflows().names().collect();
    let error_kinds: Vec<&str> = crate::job::ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "runq",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Background jobs for Google Cloud Run. Submit a job, then poll its status. Every error is application/problem+json and changes nothing."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/jobs": {
                "post": {
                    "summary": "Submit a job",
                    "parameters": [{ "name": "Idempotency-Key", "in": "header", "required": false,
                                     "schema": { "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[!-~]+$" },
                                     "description": "1 to 255 visible ASCII characters. Repeating a submit with the same key and body returns the first job (200); another body is a 409." },
                                   traceparent_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SubmitRequest" } } } },
                    "responses": auth_errors(map(json!({
                        "202": job_response("Created; `Location` is the job's URL."),
                        "200": job_response("Replay of an earlier submit with the same Idempotency-Key (the job that submit answered with), or deduplicated: the caller's live job with this `unique_key`, marked `\"deduplicated\": true` (debounced: with this submit's args and `run_after`). Nothing new was written."),
                        "400": problem("Malformed JSON."),
                        "409": problem("Idempotency-Key reused with a different request."),
                        "413": problem("Body or args over the limit (default 1 MiB)."),
                        "415": problem("Content-Type is not application/json."),
                        "422": problem("Unknown function, invalid args (a NUL character or a lone surrogate among them), unknown priority, bad max_attempts or delay_seconds, bad Idempotency-Key, bad unique_key, debounce_seconds without a unique_key, with delay_seconds or out of range.")
                    })))
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": [
                        { "name": "status", "in": "query", "schema": { "$ref": "#/components/schemas/Status" } },
                        { "name": "function", "in": "query", "schema": { "type": "string", "pattern": FUNCTION_NAME_PATTERN } },
                        { "name": "parent", "in": "query", "schema": { "type": "string", "format": "uuid" }, "description": "Only the children of this job (a fan-out)." },
                        { "name": "error_kind", "in": "query", "schema": { "type": "string", "enum": error_kinds.clone() }, "description": "The job's `error.kind`." },
                        { "name": "id", "in": "query", "schema": { "type": "string", "format": "uuid" }, "description": "This one job." },
                        { "name": "queue", "in": "query", "schema": { "type": "string" }, "description": "Jobs of this queue (a function's own, else its priority's)." },
                        { "name": "due", "in": "query", "schema": { "type": "boolean" }, "description": "Due now (`run_after` passed), or not yet." },
                        { "name": "error", "in": "query", "schema": { "type": "string", "minLength": 1, "maxLength": MAX_SEARCH_CHARS }, "description": "A substring of the error message, case-insensitive, `%` and `_` literal. Not indexed: cut off after RUNQ_SEARCH_TIMEOUT_SECS (422)." },
                        { "name": "arg", "in": "query", "schema": { "type": "string", "pattern": "^[^=]+=" }, "description": "`field=value`: a top-level args field equal to a JSON number (`n=42`), a quoted JSON string (`name=\"42\"`) or else the text (`name=acme`); by jsonb containment. Time-limited like `error`." },
                        { "name": "held", "in": "query", "schema": { "type": "boolean" }, "description": "Queued and held by a limit or a pause." },
                        { "name": "held_on", "in": "query", "schema": { "type": "string" }, "description": "Queued and held on this key: `<limit>`, `<limit>:<value>`, `pause:queue:<name>` or `pause:function:<name>`." },
                        { "name": "publish_failing", "in": "query", "schema": { "type": "boolean" }, "description": "Still queued after Pub/Sub refused its message (`publish_failures > 0`)." },
                        { "name": "dead_lettered", "in": "query", "schema": { "type": "boolean" }, "description": "Its message was dead-lettered at least once (requeued, or failed `undeliverable`)." },
                        { "name": "lease_expired", "in": "query", "schema": { "type": "boolean" }, "description": "Running with an expired lease (its worker is gone)." },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE } },
                        { "name": "cursor", "in": "query", "schema": { "type": "string", "pattern": CURSOR_PATTERN }, "description": "`next_cursor` of the previous page." }
                    ],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "A page of jobs.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobList" } } } },
                        "422": problem("Unknown status or error_kind, bad limit, cursor, parent, id, arg or flag (true/false), an empty or NUL-holding text, a search over its time limit, or unknown parameter; `field` names the parameter.")
                    })))
                }
            },
            "/jobs:batch": {
                "post": {
                    "summary": "Submit up to 1000 jobs in one commit, all or nothing",
                    "description": "Jobs with a unique_key (and debounce_seconds) are deduplicated as in POST /jobs: against the caller's live jobs and against the batch's other items with the same key, as if submitted one by one in order. A deduplicated item's job is the key's live job, marked `\"deduplicated\": true`.",
                    "parameters": [traceparent_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["jobs"], "additionalProperties": false,
                        "properties": { "jobs": { "type": "array", "minItems": 1, "maxItems": 1000,
                                                  "items": { "$ref": "#/components/schemas/SubmitRequest" } } } } } } },
                    "responses": auth_errors(map(json!({
                        "202": { "description": "The jobs, in request order: created, or (marked `deduplicated`) the live job of the item's unique_key.", "content": { "application/json": { "schema": {
                            "type": "object", "properties": { "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } } } } } } },
                        "400": problem("Malformed JSON."),
                        "413": problem("Body or some job's args over the limit."),
                        "415": problem("Content-Type is not application/json."),
                        "422": problem("Empty or over 1000 jobs, an Idempotency-Key, or an invalid job (the detail names it: jobs[i]). Nothing was written.")
                    })))
                }
            },
            "/jobs/{id}": {
                "get": {
                    "summary": "A job with its args, result or error",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "200": job_response("The job."),
                        "404": problem("No such job, or another owner's."),
                        "422": problem("The id is not a UUID.")
                    })))
                },
                "delete": {
                    "summary": "Delete a finished job, its runs and its GCS result object",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "204": { "description": "Deleted (the statement a bulk delete runs); its result object in GCS, if it had one, deleted after." },
                        "404": problem("No such job, or another owner's."),
                        "409": problem("The job is not finished (queued, retrying or running); nothing changed."),
                        "422": problem("The id is not a UUID.")
                    })))
                }
            },
            "/jobs/{id}/status": {
                "get": {
                    "summary": "Poll a job's status (one primary-key read)",
                    "parameters": [id_param(), { "name": "If-None-Match", "in": "header", "schema": { "type": "string" } },
                                   { "name": "wait", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS },
                                     "description": "Long-poll: answer as soon as the job differs from If-None-Match (or from its state when the request arrived), or after this many seconds." }],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The status, with an `ETag`.", "headers": { "ETag": { "schema": { "type": "string" } } },
                                 "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobStatus" } } } },
                        "304": { "description": "Unchanged since the `If-None-Match` ETag." },
                        "404": problem("No such job, or another owner's."),
                        "422": problem("The id is not a UUID, or wait is over 30.")
                    })))
                }
            },
            "/jobs/{id}/cancel": {
                "post": {
                    "summary": "Cancel a job",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "200": job_response("Cancelled (it was queued or retrying, or already cancelled)."),
                        "202": job_response("Cancel requested: the running job stops when its run observes it."),
                        "404": problem("No such job, or another owner's."),
                        "409": problem("The job already succeeded or failed."),
                        "422": problem("The id is not a UUID.")
                    })))
                }
            },
            "/jobs/{id}/retry": {
                "post": {
                    "summary": "Retry a failed or cancelled job with its attempt budget again",
                    "description": "The job goes back to `queued` and is published again. Its runs are kept: `attempt` keeps counting from the last run and `max_attempts` moves up by the job's budget, so the new runs are numbered after the old ones.",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "200": job_response("Queued again."),
                        "404": problem("No such job, or another owner's."),
                        "409": problem("The job is not failed or cancelled; nothing changed."),
                        "422": problem("The id is not a UUID.")
                    })))
                }
            },
            "/operations": {
                "post": {
                    "summary": "Retry, cancel or delete every job a filter matches (or count them)",
                    "description": "Owners act on their own jobs; admins on everyone's, or one `owner`'s. A real run answers at once and works in batches in the background; each matched job is acted on at most once. Jobs created after the request are never matched.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OperationRequest" } } } },
                    "responses": auth_errors(map(json!({
                        "200": { "description": "Dry run: how many jobs match now; nothing changed.",
                                 "content": { "application/json": { "schema": { "type": "object", "required": ["count"], "additionalProperties": false,
                                                                                  "properties": { "count": { "type": "integer", "minimum": 0 } } } } } },
                        "202": { "description": "Started; `Location` is the operation's URL.", "headers": { "Location": { "schema": { "type": "string" } } },
                                 "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Operation" } } } },
                        "400": problem("Malformed JSON."),
                        "403": problem("A non-admin named another owner."),
                        "415": problem("Content-Type is not application/json."),
                        "422": problem("Unknown action or field, a status the action doesn't apply to, an unknown error kind, a bad time, created_after not before created_before, or a delete without a filter. Nothing was written.")
                    })))
                },
                "get": {
                    "summary": "List bulk operations, newest first",
                    "description": "The caller's operations; an admin's: everyone's.",
                    "parameters": [
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE } },
                        { "name": "cursor", "in": "query", "schema": { "type": "string", "pattern": CURSOR_PATTERN }, "description": "`next_cursor` of the previous page." }
                    ],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "A page of operations.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OperationList" } } } },
                        "422": problem("Bad limit, bad cursor, or unknown parameter.")
                    })))
                }
            },
            "/operations/{id}": {
                "get": {
                    "summary": "A bulk operation's progress",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The operation.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Operation" } } } },
                        "404": problem("No such operation, or another owner's."),
                        "422": problem("The id is not a UUID.")
                    })))
                }
            },
            "/limits": {
                "get": {
                    "summary": "Every limit: its values now (and as declared), runs holding a slot, jobs held back, the busiest keys",
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The limits.", "content": { "application/json": { "schema": { "type": "object", "required": ["limits"],
                                 "properties": { "limits": { "type": "array", "items": { "type": "object" } } } } } } }
                    })))
                }
            },
            "/limits/{name}": {
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "put": {
                    "summary": "Change a limit's values at run time (admins); kept across deploys until DELETE",
                    "description": "Enforced by every worker from the next claim on. A raised concurrency releases held jobs at once.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false,
                        "properties": { "concurrency": { "type": ["integer", "null"], "minimum": 0, "maximum": 1000000 },
                                        "rate_per_second": { "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1000000 },
                                        "burst": { "type": "integer", "minimum": 1, "maximum": 1000000 } } } } } },
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The limit with its new values and use.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "400": problem("Malformed JSON."),
                        "403": problem("Not an admin token."),
                        "404": problem("No such limit."),
                        "415": problem("Content-Type is not application/json."),
                        "422": problem("Neither a concurrency nor a rate, or a value out of range. Nothing changed.")
                    })))
                },
                "delete": {
                    "summary": "Put a limit back to its declared values (admins)",
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The limit.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "403": problem("Not an admin token."),
                        "404": problem("No such limit.")
                    })))
                }
            },
            "/pauses": {
                "get": {
                    "summary": "Paused queues and functions, with the jobs each holds back",
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The pauses.", "content": { "application/json": { "schema": { "type": "object", "required": ["pauses"],
                                 "properties": { "pauses": { "type": "array", "items": { "type": "object" } } } } } } }
                    })))
                }
            },
            "/queues/{name}/pause": pause_path("queue", true),
            "/queues/{name}/resume": pause_path("queue", false),
            "/functions/{name}/pause": pause_path("function", true),
            "/functions/{name}/resume": pause_path("function", false),
            "/jobs/{id}/runs": {
                "get": {
                    "summary": "A job's runs, oldest first (the dashboard's timeline)",
                    "parameters": [id_param()],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "Each run: its claim, worker, start and end, outcome, error and, for a retried run, when it became due again.",
                                 "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RunList" } } } },
                        "404": problem("No such job, or another owner's."),
                        "422": problem("The id is not a UUID.")
                    })))
                }
            },
            "/dashboard": { "get": { "summary": "The dashboard: one HTML page that asks for a token and calls this API", "security": [],
                                     "responses": { "200": { "description": "text/html, with a strict Content-Security-Policy" } } } },
            "/dashboard/stats": {
                "get": {
                    "summary": "Job counts by status, function and priority, and throughput (admin token)",
                    "responses": auth_errors(map(json!({
                        "200": { "description": "The counts, from one consistent snapshot.",
                                 "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Stats" } } } },
                        "403": problem("Not an admin token.")
                    })))
                }
            },
            "/dashboard/functions": {
                "get": {
                    "summary": "Per function, the runs that ended in the window: runs per minute, duration p50/p95/p99, failure rate, top error kinds (admin token)",
                    "parameters": [window_param()],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "`{window, functions: [{function, runs, runs_per_minute, duration_ms: {p50, p95, p99}, failure_rate, top_errors: [{kind, count}]}]}`; a failed run is one that ended retrying, failed or reaped (`lost`).",
                                 "content": { "application/json": { "schema": { "type": "object" } } } },
                        "403": problem("Not an admin token."),
                        "422": problem("A window other than 15m, 1h or 24h, or an unknown parameter.")
                    })))
                }
            },
            "/dashboard/signals": {
                "get": {
                    "summary": "What may be stuck, each with a count and a GET /jobs link to exactly those jobs (admin token)",
                    "responses": auth_errors(map(json!({
                        "200": { "description": "`{signals: [{kind, label, count, oldest_age_secs?, link}]}`: due jobs per queue (`queue_due`, with the oldest's wait), held jobs (`held`, then per key `held_on_limit` / `held_on_pause`), `publish_failing`, `lease_expired`, `dead_lettered`, `undeliverable`.",
                                 "content": { "application/json": { "schema": { "type": "object" } } } },
                        "403": problem("Not an admin token.")
                    })))
                }
            },
            "/dashboard/workers": {
                "get": {
                    "summary": "Worker instances seen in the window: last seen, runs finished, what each runs now (admin token)",
                    "parameters": [window_param()],
                    "responses": auth_errors(map(json!({
                        "200": { "description": "`{window, workers: [{worker_id, last_seen, finished, running: [{id, function, started_at, lease_until, lease_expired}]}]}`, latest seen first.",
                                 "content": { "application/json": { "schema": { "type": "object" } } } },
                        "403": problem("Not an admin token."),
                        "422": problem("A window other than 15m, 1h or 24h, or an unknown parameter.")
                    })))
                }
            },
            "/healthz": { "get": { "summary": "The process is up", "security": [], "responses": { "200": { "description": "OK" } } } },
            "/readyz": { "get": { "summary": "The database is reachable", "security": [],
                                  "responses": { "200": { "description": "Ready" }, "503": problem("Database unreachable.") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (admin token)",
                                   "responses": { "200": { "description": "Prometheus text format" },
                                                  "401": problem("Missing or invalid token."),
                                                  "403": problem("Not an admin token.") } } },
            "/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": {
                "Status": { "type": "string", "enum": ["pending", "waiting", "queued", "running", "retrying", "succeeded", "failed", "cancelled"],
                            "description": "pending: a workflow step whose parents haven't finished; waiting: a signal step waiting for a person." },
                "Priority": { "type": "string", "enum": ["high", "medium", "low"] },
                "SubmitRequest": {
                    "type": "object", "required": ["function"], "additionalProperties": false,
                    "properties": {
                        "function": { "type": "string", "enum": functions, "description": "A function this deployment registers." },
                        "args": { "description": "The function's arguments (default {}). Strings and keys can't contain NUL (\\u0000)." },
                        "priority": { "$ref": "#/components/schemas/Priority" },
                        "max_attempts": { "type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT },
                        "delay_seconds": { "type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS },
                        "unique_key": { "type": "string", "minLength": 1, "maxLength": MAX_UNIQUE_KEY, "pattern": "^[!-~]+$",
                                        "description": "At most one queued, retrying or running job of the caller with this key: a submit while one lives answers 200 with it (`deduplicated`) and writes nothing. Free again once that job finishes. In POST /jobs:batch, also deduplicated against the batch's other items." },
                        "debounce_seconds": { "type": "number", "exclusiveMinimum": 0, "maximum": MAX_DEBOUNCE_SECONDS,
                                              "description": "Needs unique_key; not with delay_seconds. Run once, this many seconds after the key's submits stopped, with the last submit's args: a submit while the key's job is queued replaces its args and moves its run_after to now + debounce_seconds; while it runs, one follow-up job is queued (and debounced in turn)." }
                    }
                },
                "JobStatus": {
                    "type": "object",
                    "required": ["id", "status", "progress", "attempt", "max_attempts", "created_at", "updated_at"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "status": { "$ref": "#/components/schemas/Status" },
                        "progress": { "type": "number", "minimum": 0, "maximum": 1 },
                        "message": { "type": ["string", "null"] },
                        "attempt": { "type": "integer" },
                        "max_attempts": { "type": "integer" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "started_at": { "type": ["string", "null"], "format": "date-time" },
                        "finished_at": { "type": ["string", "null"], "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" },
                        "poll_after_ms": { "type": "integer", "description": "When to poll again; absent once finished." }
                    }
                },
                "Job": {
                    "allOf": [{ "$ref": "#/components/schemas/JobStatus" }, {
                        "type": "object",
                        "properties": {
                            "function": { "type": "string" },
                            "priority": { "$ref": "#/components/schemas/Priority" },
                            "args": {},
                            "run_after": { "type": "string", "format": "date-time" },
                            "cancel_requested": { "type": "boolean" },
                            "result": {},
                            "result_uri": { "type": ["string", "null"] },
                            "error": { "oneOf": [{ "type": "null" }, { "type": "object", "properties": {
                                "kind": { "type": "string" }, "message": { "type": "string" }, "retryable": { "type": "boolean" } } }] },
                            "parent_id": { "type": ["string", "null"], "format": "uuid" },
                            "idempotency_key": { "type": ["string", "null"] },
                            "unique_key": { "type": ["string", "null"] },
                            "deduplicated": { "type": "boolean", "const": true,
                                              "description": "Only in POST /jobs's 200 and POST /jobs:batch's items: the submit's unique_key had this live job, so nothing new was created." },
                            "children": { "type": "object", "additionalProperties": { "type": "integer" },
                                          "description": "GET /jobs/{id} of a fan-out parent: its children by status." }
                        }
                    }]
                },
                "JobList": {
                    "type": "object",
                    "properties": {
                        "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } },
                        "next_cursor": { "type": ["string", "null"] }
                    }
                },
                "Run": {
                    "type": "object",
                    "required": ["attempt", "worker_id", "started_at"],
                    "properties": {
                        "attempt": { "type": "integer" },
                        "worker_id": { "type": "string" },
                        "started_at": { "type": "string", "format": "date-time" },
                        "finished_at": { "type": ["string", "null"], "format": "date-time" },
                        "outcome": { "type": ["string", "null"], "enum": ["succeeded", "retrying", "failed", "cancelled", "released", "reaped", "lapsed", "deferred", null],
                                     "description": "null while the run is running." },
                        "error": { "oneOf": [{ "type": "null" }, { "type": "object", "properties": {
                            "kind": { "type": "string" }, "message": { "type": "string" }, "retryable": { "type": "boolean" } } }] },
                        "retry_at": { "type": ["string", "null"], "format": "date-time", "description": "When a retrying run's job became due again." }
                    }
                },
                "RunList": { "type": "object", "properties": { "runs": { "type": "array", "items": { "$ref": "#/components/schemas/Run" } } } },
                "Stats": {
                    "type": "object",
                    "properties": {
                        "by_status": { "type": "object", "additionalProperties": { "type": "integer" }, "description": "Every status, zeros included: all unfinished jobs, and those finished in the last finished_window_secs." },
                        "finished_window_secs": { "type": "integer", "description": "How far back the finished counts look (24 h)." },
                        "by_function": { "type": "object", "additionalProperties": { "type": "object", "additionalProperties": { "type": "integer" } },
                                         "description": "Function, then status, then count." },
                        "unfinished_by_priority": { "type": "object", "additionalProperties": { "type": "object", "additionalProperties": { "type": "integer" } },
                                                    "description": "Priority, then queued/running/retrying, then count: the queue depth." },
                        "throughput": { "type": "object", "properties": {
                            "finished_per_minute": { "type": "array", "description": "15 minutes ending with the current (partial) one, oldest first.",
                                                     "items": { "type": "object", "properties": {
                                                         "minute": { "type": "string", "format": "date-time" }, "finished": { "type": "integer" } } } },
                            "last_hour": { "type": "object", "properties": { "succeeded": { "type": "integer" }, "failed": { "type": "integer" } } } } }
                    }
                },
                "OperationRequest": {
                    "type": "object", "required": ["action"], "additionalProperties": false,
                    "properties": {
                        "action": { "type": "string", "enum": ["retry", "cancel", "delete"],
                                    "description": "retry: failed/cancelled jobs; cancel: queued/retrying/running ones (as POST /jobs/{id}/cancel); delete: finished ones (succeeded/failed/cancelled)." },
                        "filter": { "$ref": "#/components/schemas/OperationFilter" },
                        "dry_run": { "type": "boolean", "default": false, "description": "Answer the count only." }
                    }
                },
                "OperationFilter": {
                    "type": "object", "additionalProperties": false,
                    "description": "Every field narrows. A delete needs at least one.",
                    "properties": {
                        "function": { "type": "string", "pattern": FUNCTION_NAME_PATTERN },
                        "status": { "$ref": "#/components/schemas/Status", "description": "One of the statuses the action applies to (default: all of them)." },
                        "error_kind": { "type": "string", "enum": error_kinds, "description": "The job's `error.kind`." },
                        "created_after": { "type": "string", "format": "date-time", "description": "created_at >= this (RFC 3339)." },
                        "created_before": { "type": "string", "format": "date-time", "description": "created_at < this (RFC 3339)." },
                        "owner": { "type": "string", "description": "Admins: only this owner's jobs. Others may only name themselves." },
                        "id": { "type": "string", "format": "uuid", "description": "As in GET /jobs." },
                        "queue": { "type": "string", "description": "As in GET /jobs." },
                        "due": { "type": "boolean", "description": "As in GET /jobs." },
                        "error": { "type": "string", "minLength": 1, "maxLength": MAX_SEARCH_CHARS, "description": "As in GET /jobs (time-limited in a dry run)." },
                        "arg": { "type": "string", "description": "As in GET /jobs: `field=value`." },
                        "held": { "type": "boolean", "description": "As in GET /jobs." },
                        "held_on": { "type": "string", "description": "As in GET /jobs." },
                        "publish_failing": { "type": "boolean", "description": "As in GET /jobs." },
                        "dead_lettered": { "type": "boolean", "description": "As in GET /jobs." },
                        "lease_expired": { "type": "boolean", "description": "As in GET /jobs." }
                    }
                },
                "Operation": {
                    "type": "object", "required": ["id", "owner", "action", "filter", "status", "matched", "done", "affected", "created_at", "updated_at"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "owner": { "type": "string", "description": "Who started it (the token's `sub`)." },
                        "action": { "type": "string", "enum": ["retry", "cancel", "delete"] },
                        "filter": { "$ref": "#/components/schemas/OperationFilter" },
                        "status": { "type": "string", "enum": ["running", "finished", "failed"] },
                        "matched": { "type": ["integer", "null"], "description": "Jobs matched; null until they are counted." },
                        "done": { "type": "integer", "description": "Matched jobs processed so far." },
                        "affected": { "type": "integer", "description": "Of those, the jobs changed (the others had moved to another status since)." },
                        "error": { "type": ["string", "null"] },
                        "created_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" },
                        "finished_at": { "type": ["string", "null"], "format": "date-time" }
                    }
                },
                "OperationList": {
                    "type": "object", "required": ["operations"],
                    "properties": {
                        "operations": { "type": "array", "items": { "$ref": "#/components/schemas/Operation" } },
                        "next_cursor": { "type": ["string", "null"] }
                    }
                },
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                        "detail": { "type": "string" }, "field": { "type": "string" }
                    }
                }
            }
        }
    });
    for (section, more) in
        [("paths", workflow_paths(&functions, &templates)), ("schemas", workflow_schemas(&functions))]
    {
        let target = if section == "paths" { &mut doc["paths"] } else { &mut doc["components"]["schemas"] };
        target.as_object_mut().expect("an object").extend(map(more));
    }
    doc
}

/// The workflow routes: submit, list, status, cancel, signals, and a fan-in's parents.
fn workflow_paths(functions: &[&str], templates: &[&str]) -> Value {
    let step_param = json!({ "name": "step", "in": "path", "required": true,
                             "schema": { "type": "string", "pattern": STEP_NAME_PATTERN } });
    let idempotency = json!({ "name": "Idempotency-Key", "in": "header", "required": false,
                              "schema": { "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[!-~]+$" },
                              "description": "The same key again answers 200 with the workflow the first request created (or, for a signal, the signal it applied), writing nothing." });
    let workflow_response = |description: &str| {
        json!({ "description": description,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Workflow" } } } })
    };
    let mut step_function =
        json!({ "type": "string", "description": "A registered function (exactly one of `function` and `signal`)." });
    step_function["enum"] = json!(functions);
    let args = json!({ "description": "The workflow's args: every step's unless it has its own, and the lists fan-outs run over (default {})." });
    let steps = json!({ "type": "array", "minItems": 1, "maxItems": workflow::MAX_STEPS, "items": { "$ref": "#/components/schemas/StepSpec" } });
    let by_steps = json!({ "type": "object", "required": ["steps"], "additionalProperties": false,
                           "properties": { "steps": steps, "args": args } });
    // Exactly one of a template's name (when the application declares any) and the steps.
    let submit_schema = if templates.is_empty() {
        by_steps
    } else {
        let by_name = json!({ "type": "object", "required": ["workflow"], "additionalProperties": false,
                              "properties": { "workflow": { "type": "string", "enum": templates,
                                                            "description": "A template declared with App::workflow." },
                                              "args": args } });
        json!({ "oneOf": [by_name, by_steps] })
    };
    json!({
        "/workflows": {
            "post": {
                "summary": "Submit a workflow: a template by name with args, or its steps as JSON",
                "description": "Checked whole before anything is written: a cycle, an unknown step in `after`, an unknown function, a step name used twice, bad args or a bad fan-out is a 422 naming the step. The steps with no parents are queued at once, the rest wait (`pending`) for their parents.",
                "parameters": [idempotency.clone(), traceparent_param()],
                "requestBody": { "required": true, "content": { "application/json": { "schema": submit_schema } } },
                "responses": auth_errors(map(json!({
                    "202": workflow_response("Created; `Location` is the workflow's URL."),
                    "200": workflow_response("Replay of an earlier submit with the same Idempotency-Key; nothing was written."),
                    "400": problem("Malformed JSON."),
                    "413": problem("Args over the limit."),
                    "415": problem("Content-Type is not application/json."),
                    "422": problem("Neither or both of `workflow` and `steps`, an unknown template, a cycle, an unknown step or function, a duplicate step name, bad args, a bad fan-out, signal or rework, or a bad Idempotency-Key. Nothing was written.")
                })))
            },
            "get": {
                "summary": "List workflows, newest first (an admin's: everyone's)",
                "parameters": [
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE } },
                    { "name": "before", "in": "query", "schema": { "type": "string", "format": "uuid" }, "description": "`next_before` of the previous page." }
                ],
                "responses": auth_errors(map(json!({
                    "200": { "description": "A page of workflows.", "content": { "application/json": { "schema": {
                        "type": "object", "required": ["workflows"],
                        "properties": { "workflows": { "type": "array", "items": { "type": "object",
                                            "required": ["id", "status", "progress", "total", "created_at"] } },
                                        "next_before": { "type": ["string", "null"], "format": "uuid" } } } } } },
                    "422": problem("Bad limit or before, or an unknown parameter.")
                })))
            }
        },
        "/workflows/{id}": {
            "get": {
                "summary": "A workflow: its state, its progress and every step, with an ETag",
                "parameters": [id_param(), { "name": "If-None-Match", "in": "header", "schema": { "type": "string" } },
                               { "name": "wait", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS },
                                 "description": "Long-poll: answer as soon as any of its jobs changes (or a fan-out adds some), or after this many seconds." }],
                "responses": auth_errors(map(json!({
                    "200": workflow_response("The workflow, with an `ETag`."),
                    "304": { "description": "Unchanged since the `If-None-Match` ETag." },
                    "404": problem("No such workflow, or another owner's."),
                    "422": problem("The id is not a UUID, or wait is over 30.")
                })))
            }
        },
        "/workflows/{id}/cancel": {
            "post": {
                "summary": "Cancel a workflow: every step not yet finished",
                "parameters": [id_param()],
                "responses": auth_errors(map(json!({
                    "202": workflow_response("Pending, waiting, queued and retrying steps cancelled; running ones asked to stop."),
                    "200": workflow_response("It was cancelled already."),
                    "404": problem("No such workflow, or another owner's."),
                    "409": problem("It already succeeded or failed."),
                    "422": problem("The id is not a UUID.")
                })))
            }
        },
        "/workflows/{id}/retry": {
            "post": {
                "summary": "Retry a failed or cancelled workflow from where it stopped",
                "description": "Every step that failed or was cancelled starts over (its attempt budget again, its runs kept), after those of its parents that start over too; steps that succeeded keep their results and don't run again. A signal step that had a decision waits for a new one, in a new round.",
                "parameters": [id_param()],
                "responses": auth_errors(map(json!({
                    "202": workflow_response("Started over: the steps whose parents all succeeded are queued (or waiting) at once."),
                    "404": problem("No such workflow, or another owner's."),
                    "409": problem("A step is not finished yet, or the workflow succeeded; nothing changed."),
                    "422": problem("The id is not a UUID.")
                })))
            }
        },
        "/workflows/{id}/steps/{step}/signal": {
            "post": {
                "summary": "Answer a waiting signal step (the workflow's owner, or an admin): approve or reject, with data",
                "description": "Recorded with who sent it. Approve: the step succeeds with the data as its result. Reject: the workflow goes back to the step's `on_reject.back_to` with the data as its input `rework`, or the step fails (kind `rejected`).",
                "parameters": [id_param(), step_param, idempotency],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Signal" } } } },
                "responses": auth_errors(map(json!({
                    "200": { "description": "The workflow, and `repeated`: true when this same signal (or Idempotency-Key) was applied before and nothing changed.",
                             "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Workflow" } } } },
                    "400": problem("Malformed JSON."),
                    "404": problem("No such workflow or step, or another owner's."),
                    "409": problem("The step is not waiting for a signal (not yet reached, or already answered); nothing changed."),
                    "413": problem("Data over the limit."),
                    "415": problem("Content-Type is not application/json."),
                    "422": problem("The step runs a function (not a signal step), an unknown decision, or a bad id or Idempotency-Key.")
                })))
            }
        },
        "/jobs/{id}/parents": {
            "get": {
                "summary": "The jobs a workflow step or continuation ran after, with their results, page by page",
                "parameters": [id_param(),
                    { "name": "after", "in": "query", "schema": { "type": "string", "format": "uuid" }, "description": "`next_after` of the previous page." },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": crate::store::MAX_PARENTS_PAGE, "default": 100 } }],
                "responses": auth_errors(map(json!({
                    "200": { "description": "`{parents: [{job_id, name, index?, item?, status, result?, error?}], next_after}`, by job id.",
                             "content": { "application/json": { "schema": { "type": "object", "required": ["parents"] } } } },
                    "404": problem("No such job, or another owner's."),
                    "422": problem("Bad id, after or limit, or an unknown parameter.")
                })))
            }
        }
    })
}

/// The workflow schemas.
fn workflow_schemas(functions: &[&str]) -> Value {
    let decision = json!({ "type": "string", "enum": ["approve", "reject"] });
    let signal = json!({ "type": "object", "required": ["decision"], "additionalProperties": false,
                         "properties": { "decision": decision, "data": { "description": "Any JSON (default {}): an edited file, a reviewer's notes." } } });
    let mut function = json!({ "type": "string" });
    function["enum"] = json!(functions);
    json!({
        "Signal": signal,
        "StepSpec": {
            "type": "object", "required": ["name"], "additionalProperties": false,
            "description": "A step: a function to run, or a signal to wait for (exactly one of the two).",
            "oneOf": [{ "required": ["function"] }, { "required": ["signal"] }],
            "properties": {
                "name": { "type": "string", "pattern": STEP_NAME_PATTERN, "description": "Unique in the workflow." },
                "function": function,
                "args": { "description": "The step's args; the workflow's when absent." },
                "after": { "type": "array", "items": { "type": "string", "pattern": STEP_NAME_PATTERN }, "description": "Steps it runs after, all of which must succeed (unless run_on_failure)." },
                "priority": { "$ref": "#/components/schemas/Priority" },
                "max_attempts": { "type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT },
                "run_on_failure": { "type": "boolean", "description": "Runs once its parents finished, whatever their outcome; not cancelled when the workflow fails." },
                "for_each": { "type": "string", "description": "Fan-out: one job per element of the array at this field of the workflow's args." },
                "item_as": { "type": "string", "description": "The args field each member finds its element in (default `item`)." },
                "signal": { "type": "object", "additionalProperties": false, "properties": {
                    "timeout_secs": { "type": "number", "exclusiveMinimum": 0, "maximum": workflow::MAX_SIGNAL_TIMEOUT_SECS },
                    "on_timeout": { "$ref": "#/components/schemas/Signal" },
                    "on_reject": { "type": "object", "required": ["back_to", "max_rounds"], "additionalProperties": false, "properties": {
                        "back_to": { "type": "string", "pattern": STEP_NAME_PATTERN },
                        "max_rounds": { "type": "integer", "minimum": 1, "maximum": workflow::MAX_ROUNDS } } } } }
            }
        },
        "Workflow": {
            "type": "object",
            "required": ["id", "status", "progress", "args", "cancel_requested", "created_at", "updated_at", "counts", "total", "steps"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "name": { "type": ["string", "null"], "description": "The template it was submitted by." },
                "status": { "type": "string", "enum": ["running", "waiting", "succeeded", "failed", "cancelled"] },
                "progress": { "type": "number", "minimum": 0, "maximum": 1 },
                "args": {},
                "failure": { "description": "The first step that failed or was cancelled, and why." },
                "cancel_requested": { "type": "boolean" },
                "created_at": { "type": "string", "format": "date-time" },
                "updated_at": { "type": "string", "format": "date-time" },
                "finished_at": { "type": ["string", "null"], "format": "date-time" },
                "counts": { "type": "object", "additionalProperties": { "type": "integer" }, "description": "Its jobs by status." },
                "total": { "type": "integer" },
                "poll_after_ms": { "type": "integer", "description": "When to poll again; absent once finished." },
                "steps": { "type": "array", "items": { "type": "object",
                    "required": ["name", "signal", "after", "status", "progress", "round", "counts", "total", "jobs"],
                    "properties": {
                        "name": { "type": "string" }, "function": { "type": "string" }, "signal": { "type": "boolean" },
                        "after": { "type": "array", "items": { "type": "string" } },
                        "status": { "$ref": "#/components/schemas/Status" },
                        "progress": { "type": "number" }, "message": { "type": ["string", "null"] },
                        "round": { "type": "integer", "description": "Rework rounds it went through." },
                        "counts": { "type": "object", "additionalProperties": { "type": "integer" } },
                        "total": { "type": "integer" },
                        "jobs": { "type": "array", "description": "Its jobs (up to 100; beyond, only counts): job_id, index/item of a fan-out member, status, progress, attempt, timestamps, error." },
                        "result": { "description": "A single job's inline result (a signal step: the decision)." } } } }
            }
        }
    })
}

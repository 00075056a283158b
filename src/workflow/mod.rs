//! Workflows: a DAG of steps, each an ordinary job, declared in code ([`Workflow`], registered
//! with [`crate::App::workflow`] and submitted by name) or submitted whole as JSON.
//!
//! This module owns the shape: [`WorkflowSpec`] is what a client sends or a template holds;
//! [`crate::submit::plan_workflow`] checks one and expands it into a [`Plan`] of jobs and
//! edges, which the store inserts ([`crate::store::submit_workflow`]). The transitions between
//! steps run in Postgres, in the statement that finishes a parent (the workflows migration's
//! trigger; `docs/workflows.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::job::Priority;

/// The function name a signal step's job carries (it runs no function).
pub const SIGNAL_FUNCTION: &str = "runq.signal";
/// Most steps one workflow may declare.
pub const MAX_STEPS: usize = 200;
/// Most jobs one workflow may expand into (its fan-outs included), and most children one run
/// may spawn under a continuation.
pub const MAX_JOBS: usize = 10_000;
/// Most rework rounds a signal step may allow.
pub const MAX_ROUNDS: u32 = 100;
/// Longest accepted signal timeout: 30 days.
pub const MAX_SIGNAL_TIMEOUT_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// A workflow as submitted: its steps, in any order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub steps: Vec<StepSpec>,
}

/// One step: a function to run, or a signal to wait for (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique in the workflow: 1-64 characters of a-z, 0-9, '_' and '-'.
    pub name: String,
    /// A registered function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The function's args; the workflow's args when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The steps it runs after (all of them must succeed, unless `run_on_failure`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// `high`, `medium` or `low`; the function's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Runs once its parents have finished, whatever their outcome (cleanup, a notification);
    /// such a step is not cancelled when the workflow fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_on_failure: bool,
    /// Fan-out: one job per element of the array at this field of the workflow's args, each
    /// with the element in its args under `item_as`. A fan-out step after another over the same
    /// field runs per element (element i after element i); any other step after it, after all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// The args field each fan-out member finds its element in (default `item`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_as: Option<String>,
    /// Makes this a signal step: it waits for `POST .../signal` instead of running a function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalSpec>,
}

/// How a signal step waits, and what a rejection or its timeout does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    /// Fails the step (kind `timeout`) after this long without a signal, or takes `on_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// The decision taken when the timeout passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<Signal>,
    /// A rejection sends the workflow back to an earlier step, with the signal's data as that
    /// step's input `rework`, for at most `max_rounds` rounds; without it a rejection fails it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reject: Option<Rework>,
}

/// Where a rejection sends the workflow back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rework {
    /// An earlier step (an ancestor of the signal step).
    pub back_to: String,
    /// Rejections that send it back; the one after fails the step (kind `rejected`).
    pub max_rounds: u32,
}

/// A person's decision on a signal step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// What `POST .../signal` carries: a decision and any JSON (an edited caption file, notes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub decision: Decision,
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// One parent of a step (a fan-in pages through them: `Context::parents`, `GET /jobs/{id}/parents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentResult {
    pub job_id: Uuid,
    /// The name the child reads it under (its step).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    pub status: crate::job::Status,
    pub result: Option<Value>,
    pub result_uri: Option<String>,
    pub error: Option<crate::job::JobError>,
}

/// A workflow template declared in code, built step by step.
///
/// ```
/// use runq::workflow::{Step, Workflow};
/// let speech = Workflow::new("speech_to_text")
///     .step(Step::run("transcribe", "transcribe").priority("high"))
///     .step(Step::run("summarize", "summarize").after(["transcribe"]))
///     .step(Step::run("index", "index").after(["summarize"]).priority("low"));
/// assert_eq!(speech.spec().steps.len(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct Workflow {
    name: String,
    spec: WorkflowSpec,
}

impl Workflow {
    /// An empty template called `name` (what clients submit).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), spec: WorkflowSpec { steps: Vec::new() } }
    }

    /// This template with one more step.
    pub fn step(mut self, step: Step) -> Self {
        self.spec.steps.push(step.0);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &WorkflowSpec {
        &self.spec
    }
}

/// One step of a [`Workflow`].
#[derive(Debug, Clone)]
pub struct Step(StepSpec);

impl Step {
    /// A step `name` running `function`.
    pub fn run(name: impl Into<String>, function: impl Into<String>) -> Self {
        Self(StepSpec { name: name.into(), function: Some(function.into()), ..Default::default() })
    }

    /// A step `name` that waits for a signal (no timeout, a rejection fails it).
    pub fn signal(name: impl Into<String>) -> Self {
        Self(StepSpec { name: name.into(), signal: Some(SignalSpec::default()), ..Default::default() })
    }

    pub fn after<S: Into<String>>(mut self, parents: impl IntoIterator<Item = S>) -> Self {
        self.0.after.extend(parents.into_iter().map(Into::into));
        self
    }

    pub fn args(mut self, args: Value) -> Self {
        self.0.args = Some(args);
        self
    }

    pub fn priority(mut self, priority: impl Into<String>) -> Self {
        self.0.priority = Some(priority.into());
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.0.max_attempts = Some(n);
        self
    }

    pub fn run_on_failure(mut self) -> Self {
        self.0.run_on_failure = true;
        self
    }

    /// One job per element of the workflow args' array `field`, which each finds under `item_as`.
    pub fn for_each(mut self, field: impl Into<String>, item_as: impl Into<String>) -> Self {
        self.0.for_each = Some(field.into());
        self.0.item_as = Some(item_as.into());
        self
    }

    /// A signal step's timeout, after which it fails, or takes `default` when given.
    pub fn timeout(mut self, secs: f64, default: Option<Signal>) -> Self {
        let signal = self.0.signal.get_or_insert_with(Default::default);
        signal.timeout_secs = Some(secs);
        signal.on_timeout = default;
        self
    }

    /// A signal step's rejection sends the workflow back to `step`, at most `max_rounds` times.
    pub fn on_reject_back_to(mut self, step: impl Into<String>, max_rounds: u32) -> Self {
        let signal = self.0.signal.get_or_insert_with(Default::default);
        signal.on_reject = Some(Rework { back_to: step.into(), max_rounds });
        self
    }
}

/// What is wrong with a workflow: the path of the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Invalid {
    /// `steps[2].after`, `args.languages`, ...
    pub path: String,
    pub message: String,
}

/// One job of a [`Plan`].
#[derive(Debug)]
pub struct PlannedJob {
    pub id: Uuid,
    /// The step it belongs to.
    pub step: String,
    /// For a fan-out member: its position and element.
    pub item_index: Option<i32>,
    pub item: Option<Value>,
    /// The checked job (function, queue, attempts, limit keys); for a signal step, the
    /// [`SIGNAL_FUNCTION`] placeholder.
    pub function: String,
    pub priority: Priority,
    pub queue: Option<String>,
    pub args: Box<RawValue>,
    pub max_attempts: i32,
    pub limit_keys: Vec<String>,
    pub run_on_failure: bool,
    pub signal: Option<SignalSpec>,
    /// Indexes (into [`Plan::jobs`]) of the jobs it runs after, with the name it reads each under.
    pub parents: Vec<(usize, String)>,
}

/// A checked workflow, expanded into jobs (in an order where parents come first).
#[derive(Debug)]
pub struct Plan {
    pub jobs: Vec<PlannedJob>,
}

/// The templates of an [`crate::App`], by name (checked by [`crate::submit::check_workflow`]).
#[derive(Debug, Clone, Default)]
pub struct Templates(BTreeMap<String, WorkflowSpec>);

impl Templates {
    /// Adds a template; refused when its name is invalid or taken.
    pub fn add(&mut self, workflow: Workflow) -> Result<(), String> {
        if !valid_step_name(&workflow.name) {
            return Err(format!(
                "workflow name {:?} is invalid: use 1-64 characters of a-z, 0-9, '_', '-'",
                workflow.name
            ));
        }
        if self.0.contains_key(&workflow.name) {
            return Err(format!("workflow `{}` is declared twice", workflow.name));
        }
        self.0.insert(workflow.name, workflow.spec);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&WorkflowSpec> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Whether `name` can name a step or a workflow: 1-64 characters of a-z, 0-9, '_', '-'.
pub fn valid_step_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

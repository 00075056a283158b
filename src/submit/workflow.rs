//! The check of a new workflow, as [`super::validate`] is a new job's: every step named once,
//! every `after` naming a step, no cycle, each step a registered function whose args it accepts
//! (or a signal), fan-outs over arrays of the args, reworks pointing back at an ancestor. A
//! checked workflow comes out as a [`Plan`], the jobs and edges the store inserts.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::Submission;
use crate::function::Registry;
use crate::job::Priority;
use crate::store::JobSpec;
use crate::workflow::{
    Invalid, MAX_JOBS, MAX_ROUNDS, MAX_SIGNAL_TIMEOUT_SECS, MAX_STEPS, Plan, PlannedJob, SIGNAL_FUNCTION, SignalSpec,
    StepSpec, Workflow, WorkflowSpec, valid_step_name,
};

fn invalid(path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { path: path.into(), message: message.into() }
}

/// Checks `spec` against the registry and expands it for `owner` with `args`: every step named
/// once, every `after` naming a step, no cycle, each step a registered function (its args
/// accepted by it) or a signal, fan-outs over arrays of `args`, reworks pointing at an ancestor.
/// Nothing is written; the first fault found is the answer.
pub fn plan_workflow(registry: &Registry, owner: &str, spec: &WorkflowSpec, args: &Value) -> Result<Plan, Invalid> {
    if spec.steps.is_empty() {
        return Err(invalid("steps", "a workflow needs at least one step"));
    }
    if spec.steps.len() > MAX_STEPS {
        return Err(invalid("steps", format!("at most {MAX_STEPS} steps")));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in spec.steps.iter().enumerate() {
        if !valid_step_name(&step.name) {
            return Err(invalid(
                format!("steps[{i}].name"),
                format!("step name {:?} is invalid: use 1-64 characters of a-z, 0-9, '_', '-'", step.name),
            ));
        }
        if index.insert(&step.name, i).is_some() {
            return Err(invalid(format!("steps[{i}].name"), format!("step `{}` is declared twice", step.name)));
        }
    }
    for (i, step) in spec.steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for parent in &step.after {
            if !index.contains_key(parent.as_str()) {
                return Err(invalid(
                    format!("steps[{i}].after"),
                    format!("step `{}` runs after `{parent}`, which is not a step of this workflow", step.name),
                ));
            }
            if parent == &step.name {
                return Err(invalid(format!("steps[{i}].after"), format!("step `{}` runs after itself", step.name)));
            }
            if !seen.insert(parent) {
                return Err(invalid(format!("steps[{i}].after"), format!("`{parent}` is named twice")));
            }
        }
        match (&step.function, &step.signal) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!("steps[{i}]"), "a step runs a function or waits for a signal, not both"));
            }
            (None, None) => {
                return Err(invalid(format!("steps[{i}]"), "a step needs a `function` or a `signal`"));
            }
            (Some(f), None) if registry.get(f).is_none() => {
                return Err(invalid(format!("steps[{i}].function"), format!("unknown function `{f}`")));
            }
            _ => {}
        }
    }
    let order = topological(spec, &index)?;
    for (i, step) in spec.steps.iter().enumerate() {
        if let Some(signal) = &step.signal {
            check_signal(spec, &index, i, signal)?;
            if step.for_each.is_some() {
                return Err(invalid(format!("steps[{i}].for_each"), "a signal step can't fan out"));
            }
            if step.args.is_some() || step.priority.is_some() || step.max_attempts.is_some() {
                return Err(invalid(format!("steps[{i}]"), "a signal step takes no args, priority or max_attempts"));
            }
        }
    }

    // Expand, parents first.
    let mut jobs: Vec<PlannedJob> = Vec::new();
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for &i in &order {
        let step = &spec.steps[i];
        let items = match &step.for_each {
            None => None,
            Some(field) => Some(fan_out_items(args, field, i)?),
        };
        let count = items.as_ref().map_or(1, Vec::len);
        if jobs.len() + count > MAX_JOBS {
            return Err(invalid("steps", format!("the workflow expands into more than {MAX_JOBS} jobs")));
        }
        let mut mine = Vec::with_capacity(count);
        for k in 0..count {
            let item = items.as_ref().map(|items| items[k].clone());
            let mut parents = Vec::new();
            for parent in &step.after {
                let p = index[parent.as_str()];
                let pairwise = step.for_each.is_some() && spec.steps[p].for_each == step.for_each;
                if pairwise {
                    parents.push((members[&p][k], parent.clone()));
                } else {
                    parents.extend(members[&p].iter().map(|&m| (m, parent.clone())));
                }
            }
            let job = planned(registry, owner, step, i, args, item, k, parents)?;
            mine.push(jobs.len());
            jobs.push(job);
        }
        members.insert(i, mine);
    }
    Ok(Plan { jobs })
}

/// The steps in an order where every step comes after its parents; a cycle is an error naming
/// the steps on it.
fn topological(spec: &WorkflowSpec, index: &HashMap<&str, usize>) -> Result<Vec<usize>, Invalid> {
    let n = spec.steps.len();
    let mut indegree = vec![0usize; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, step) in spec.steps.iter().enumerate() {
        for parent in &step.after {
            let p = index[parent.as_str()];
            indegree[i] += 1;
            children[p].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    if order.len() < n {
        let on_cycle: Vec<&str> = (0..n).filter(|&i| indegree[i] > 0).map(|i| spec.steps[i].name.as_str()).collect();
        return Err(invalid("steps", format!("the steps form a cycle through {}", on_cycle.join(", "))));
    }
    Ok(order)
}

/// Whether step `ancestor` is reachable from step `of` by following `after`.
fn is_ancestor(spec: &WorkflowSpec, index: &HashMap<&str, usize>, ancestor: usize, of: usize) -> bool {
    let mut stack = vec![of];
    let mut seen = HashSet::new();
    while let Some(i) = stack.pop() {
        for parent in &spec.steps[i].after {
            let p = index[parent.as_str()];
            if p == ancestor {
                return true;
            }
            if seen.insert(p) {
                stack.push(p);
            }
        }
    }
    false
}

fn check_signal(
    spec: &WorkflowSpec,
    index: &HashMap<&str, usize>,
    i: usize,
    signal: &SignalSpec,
) -> Result<(), Invalid> {
    if let Some(t) = signal.timeout_secs
        && !(t.is_finite() && t > 0.0 && t <= MAX_SIGNAL_TIMEOUT_SECS)
    {
        return Err(invalid(
            format!("steps[{i}].signal.timeout_secs"),
            format!("must be over 0 and at most {MAX_SIGNAL_TIMEOUT_SECS}"),
        ));
    }
    if signal.on_timeout.is_some() && signal.timeout_secs.is_none() {
        return Err(invalid(format!("steps[{i}].signal.on_timeout"), "needs a timeout_secs"));
    }
    if let Some(rework) = &signal.on_reject {
        let Some(&target) = index.get(rework.back_to.as_str()) else {
            return Err(invalid(
                format!("steps[{i}].signal.on_reject.back_to"),
                format!("`{}` is not a step of this workflow", rework.back_to),
            ));
        };
        if !is_ancestor(spec, index, target, i) {
            return Err(invalid(
                format!("steps[{i}].signal.on_reject.back_to"),
                format!("`{}` must be a step that `{}` runs after", rework.back_to, spec.steps[i].name),
            ));
        }
        if spec.steps[target].for_each.is_some() || spec.steps[target].signal.is_some() {
            return Err(invalid(
                format!("steps[{i}].signal.on_reject.back_to"),
                "must be a function step without a fan-out",
            ));
        }
        if !(1..=MAX_ROUNDS).contains(&rework.max_rounds) {
            return Err(invalid(
                format!("steps[{i}].signal.on_reject.max_rounds"),
                format!("must be between 1 and {MAX_ROUNDS}"),
            ));
        }
    }
    Ok(())
}

fn fan_out_items(args: &Value, field: &str, i: usize) -> Result<Vec<Value>, Invalid> {
    match args.get(field) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items.clone()),
        Some(Value::Array(_)) => {
            Err(invalid(format!("args.{field}"), format!("steps[{i}] fans out over it; it is empty")))
        }
        _ => Err(invalid(
            format!("steps[{i}].for_each"),
            format!("fans out over `{field}`, which must be an array in the workflow's args"),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn planned(
    registry: &Registry,
    owner: &str,
    step: &StepSpec,
    i: usize,
    workflow_args: &Value,
    item: Option<Value>,
    k: usize,
    parents: Vec<(usize, String)>,
) -> Result<PlannedJob, Invalid> {
    let mut args = step.args.clone().unwrap_or_else(|| workflow_args.clone());
    if let Some(item) = &item {
        let Value::Object(map) = &mut args else {
            return Err(invalid(format!("steps[{i}].args"), "a fan-out step's args must be an object"));
        };
        map.insert(step.item_as.clone().unwrap_or_else(|| "item".into()), item.clone());
    }
    let raw = RawValue::from_string(args.to_string()).expect("a Value serializes");
    let base = PlannedJob {
        id: Uuid::now_v7(),
        step: step.name.clone(),
        item_index: item.as_ref().map(|_| k as i32),
        item,
        function: SIGNAL_FUNCTION.into(),
        priority: Priority::Medium,
        queue: None,
        args: raw,
        max_attempts: 1,
        limit_keys: Vec::new(),
        run_on_failure: step.run_on_failure,
        signal: step.signal.clone(),
        parents,
    };
    let Some(function) = &step.function else {
        return Ok(base);
    };
    let checked = {
        let submission = Submission {
            priority: step.priority.as_deref(),
            max_attempts: step.max_attempts,
            ..Submission::new(owner, function, &base.args)
        };
        let spec: JobSpec<'_> = super::validate(registry, None, &submission)
            .map_err(|e| invalid(format!("steps[{i}].{}", e.field()), format!("step `{}`: {e}", step.name)))?;
        (spec.function.to_owned(), spec.priority, spec.queue.map(str::to_owned), spec.max_attempts, spec.limit_keys)
    };
    let (function, priority, queue, max_attempts, limit_keys) = checked;
    Ok(PlannedJob { function, priority, queue, max_attempts, limit_keys, ..base })
}

/// The checks of [`plan_workflow`] that need no args (names, edges, cycles, functions, signals),
/// for a template when it is declared; its fan-outs and args are checked when it is submitted.
pub fn check_workflow(registry: &Registry, workflow: &Workflow) -> Result<(), String> {
    check_shape(registry, workflow.spec()).map_err(|e| format!("workflow `{}`: {e}", workflow.name()))
}

fn check_shape(registry: &Registry, spec: &WorkflowSpec) -> Result<(), Invalid> {
    let stripped =
        WorkflowSpec { steps: spec.steps.iter().map(|s| StepSpec { for_each: None, ..s.clone() }).collect() };
    // Args are the workflow's at submit: check everything but them here.
    match plan_workflow(registry, "template-check", &stripped, &Value::Null) {
        Ok(_) => Ok(()),
        Err(e) if e.path.ends_with(".args") => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::WorkflowSpec;
    use serde_json::json;

    fn spec(steps: Value) -> WorkflowSpec {
        serde_json::from_value(json!({ "steps": steps })).unwrap()
    }

    fn fault(steps: Value, args: Value) -> Invalid {
        plan_workflow(&Registry::builtin(), "alice", &spec(steps), &args).unwrap_err()
    }

    #[test]
    fn bad_shapes_are_refused_naming_the_field() {
        let e = fault(
            json!([{"name": "a", "function": "noop", "after": ["b"]}, {"name": "b", "function": "noop", "after": ["a"]}]),
            json!({}),
        );
        assert!(e.message.contains("cycle") && e.message.contains('a') && e.message.contains('b'), "{e}");
        let e = fault(json!([{"name": "a", "function": "noop", "after": ["ghost"]}]), json!({}));
        assert_eq!(e.path, "steps[0].after");
        let e = fault(json!([{"name": "a", "function": "nope"}]), json!({}));
        assert_eq!(e.path, "steps[0].function");
        assert!(e.message.contains("unknown function `nope`"));
        let e = fault(json!([{"name": "a", "function": "noop"}, {"name": "a", "function": "noop"}]), json!({}));
        assert_eq!((e.path.as_str(), e.message.contains("twice")), ("steps[1].name", true));
        let e = fault(json!([{"name": "a", "function": "noop", "after": ["a"]}]), json!({}));
        assert!(e.message.contains("itself"));
        let e = fault(json!([{"name": "a"}]), json!({}));
        assert!(e.message.contains("function"));
        let e = fault(json!([{"name": "a", "function": "noop", "for_each": "langs"}]), json!({}));
        assert_eq!(e.path, "steps[0].for_each");
        let e = fault(json!([{"name": "a", "function": "sleep", "args": {"seconds": "x"}}]), json!({}));
        assert_eq!(e.path, "steps[0].args");
        let e = fault(
            json!([{"name": "a", "function": "noop"}, {"name": "r", "signal": {"on_reject": {"back_to": "a", "max_rounds": 2}}}]),
            json!({}),
        );
        assert_eq!(e.path, "steps[1].signal.on_reject.back_to", "a rework must go back to an ancestor");
        assert!(plan_workflow(&Registry::builtin(), "alice", &spec(json!([])), &json!({})).is_err());
    }

    /// Takes any args.
    struct Any;
    impl crate::function::Function for Any {
        type Args = Value;
        type Output = Value;
        fn name(&self) -> &'static str {
            "any"
        }
        async fn run(&self, _: crate::function::Context, args: Value) -> Result<Value, crate::function::FunctionError> {
            Ok(args)
        }
    }

    #[test]
    fn fan_outs_expand_pairwise_and_fan_in_after_all() {
        let steps = json!([
            {"name": "ingest", "function": "any"},
            {"name": "translate", "function": "any", "args": {"value": 1}, "after": ["ingest"], "for_each": "languages", "item_as": "language"},
            {"name": "speak", "function": "any", "args": {"value": 2}, "after": ["translate"], "for_each": "languages"},
            {"name": "deliver", "function": "any", "after": ["speak"]},
        ]);
        let mut registry = Registry::builtin();
        registry.register(Any).unwrap();
        let plan = plan_workflow(&registry, "alice", &spec(steps), &json!({"languages": ["fr", "de", "ja"]})).unwrap();
        assert_eq!(plan.jobs.len(), 1 + 3 + 3 + 1);
        let by_step =
            |s: &str| plan.jobs.iter().enumerate().filter(|(_, j)| j.step == s).map(|(i, _)| i).collect::<Vec<_>>();
        let (translate, speak, deliver) = (by_step("translate"), by_step("speak"), by_step("deliver"));
        for (k, &s) in speak.iter().enumerate() {
            assert_eq!(plan.jobs[s].parents, vec![(translate[k], "translate".to_owned())], "pairwise");
        }
        let fan_in: Vec<usize> = plan.jobs[deliver[0]].parents.iter().map(|p| p.0).collect();
        assert_eq!(fan_in, speak);
        let args: Value = serde_json::from_str(plan.jobs[translate[1]].args.get()).unwrap();
        assert_eq!(args, json!({"value": 1, "language": "de"}));
        // Parents come first.
        for (i, job) in plan.jobs.iter().enumerate() {
            assert!(job.parents.iter().all(|&(p, _)| p < i));
        }
    }
}

//! `runq.toml`: what an [`App`] declares in Rust, declared in a file for the stock binary
//! (`RUNQ_CONFIG`): HTTP functions, queues, limits, workflow templates and schedules. Every error names the file,
//! the line and column, and the key, and nothing is declared from a file that has one.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::App;
use crate::function::Backoff;
use crate::function::http::HttpFunction;
use crate::job::Priority;
use crate::limits::Limit;
use crate::schedule::{Action, Schedule};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    functions: std::collections::BTreeMap<Spanned<String>, Spanned<FunctionDecl>>,
    #[serde(default)]
    queues: std::collections::BTreeMap<Spanned<String>, Spanned<QueueDecl>>,
    #[serde(default)]
    limits: std::collections::BTreeMap<Spanned<String>, Spanned<LimitDecl>>,
    #[serde(default)]
    workflows: std::collections::BTreeMap<Spanned<String>, Spanned<crate::workflow::WorkflowSpec>>,
    #[serde(default)]
    schedules: std::collections::BTreeMap<Spanned<String>, Spanned<ScheduleDecl>>,
}

/// `[functions.NAME]`: an HTTP function.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionDecl {
    url: Spanned<String>,
    audience: Option<String>,
    timeout_secs: Option<Spanned<u64>>,
    priority: Option<Priority>,
    queue: Option<Spanned<String>>,
    max_attempts: Option<Spanned<u32>>,
    backoff: Option<BackoffDecl>,
    #[serde(default)]
    detached: bool,
    /// Each call from an execution of its own (`runq exec`).
    #[serde(default)]
    cloud_run_job: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffDecl {
    initial_secs: f64,
    max_secs: f64,
}

/// `[queues.NAME]`: a queue of its own, with its worker service's sizes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueDecl {
    concurrency: Option<u32>,
    max_instances: Option<u32>,
    cpu: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    cpu_always_allocated: bool,
}

/// `[limits.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDecl {
    functions: Vec<String>,
    concurrency: Option<u32>,
    rate_per_second: Option<f64>,
    burst: Option<u32>,
    /// `owner`, or `arg:FIELD`; global when absent.
    per: Option<String>,
}

/// `[schedules.NAME]`: a job (`function`) or a workflow template (`workflow`) on a cron.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleDecl {
    cron: String,
    #[serde(default = "utc")]
    time_zone: String,
    function: Option<Spanned<String>>,
    workflow: Option<Spanned<String>>,
    #[serde(default = "empty_object")]
    args: Value,
    priority: Option<Priority>,
    #[serde(default)]
    unique: bool,
}

fn utc() -> String {
    "UTC".into()
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Where in the file an error is, and what it says.
struct Located {
    span: std::ops::Range<usize>,
    /// The key, dotted from the file's root (`functions.transcribe.url`).
    key: String,
    message: String,
}

impl App {
    /// Adds the declarations of the `runq.toml` at `path`; `dev` allows plain `http://` URLs
    /// (`runq dev` only). Every error is `FILE:LINE:COLUMN: KEY: what is wrong`, one per line.
    pub fn declare_file(mut self, path: &Path, dev: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: can't read it: {e}", path.display()))?;
        let name = path.display().to_string();
        let file: File = toml::from_str(&text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(&text, span.start);
            render(&name, &text, &Located { span, key, message: e.message().trim().to_owned() })
        })?;
        let errors = self.declare(file, dev);
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors.iter().map(|e| render(&name, &text, e)).collect::<Vec<_>>().join("\n"))
        }
    }

    /// Declares what the file holds, in dependency order (functions and queues before the
    /// limits and schedules that name them); returns every error found.
    fn declare(&mut self, file: File, dev: bool) -> Vec<Located> {
        let mut errors = Vec::new();
        let at = |span: std::ops::Range<usize>, key: String, message: String| Located { span, key, message };
        for (name, decl) in file.queues {
            let key = format!("queues.{}", name.get_ref());
            if !crate::job::valid_queue_name(name.get_ref()) {
                errors.push(at(
                    name.span(),
                    key,
                    "use 1-30 characters of a-z, 0-9, '-', starting with a letter".into(),
                ));
                continue;
            }
            if self.queues.iter().any(|q| q.name == *name.get_ref()) {
                errors.push(at(name.span(), key, "this queue is declared already (a priority's, or twice)".into()));
                continue;
            }
            let decl = decl.into_inner();
            let mut spec = crate::infra::QueueSpec::custom(name.get_ref());
            spec.concurrency = decl.concurrency.unwrap_or(spec.concurrency);
            spec.max_instances = decl.max_instances.unwrap_or(spec.max_instances);
            spec.cpu = decl.cpu.unwrap_or(spec.cpu);
            spec.memory = decl.memory.unwrap_or(spec.memory);
            spec.cpu_always_allocated = decl.cpu_always_allocated;
            self.queues.push(spec);
        }
        for (name, decl) in file.functions {
            let key = format!("functions.{}", name.get_ref());
            if self.registry.get(name.get_ref()).is_some() {
                let what = "a function of this name exists already (a built-in, or one registered in code)";
                errors.push(at(name.span(), key, what.into()));
                continue;
            }
            let (span, decl) = (decl.span(), decl.into_inner());
            let url_span = decl.url.span();
            if let Some(queue) = &decl.queue
                && !self.queues.iter().any(|q| q.name == *queue.get_ref())
            {
                let what =
                    format!("queue `{}` is not declared: add a [queues.{}] table", queue.get_ref(), queue.get_ref());
                errors.push(at(queue.span(), format!("{key}.queue"), what));
                continue;
            }
            let mut f = HttpFunction::new(name.get_ref(), decl.url.into_inner())
                .detached(decl.detached)
                .cloud_run_job(decl.cloud_run_job);
            if let Some(audience) = decl.audience {
                f = f.audience(audience);
            }
            if let Some(timeout) = &decl.timeout_secs {
                if *timeout.get_ref() == 0 {
                    errors.push(at(timeout.span(), format!("{key}.timeout_secs"), "must be at least 1".into()));
                    continue;
                }
                f = f.timeout(Duration::from_secs(*timeout.get_ref()));
            }
            if let Some(priority) = decl.priority {
                f = f.priority(priority);
            }
            if let Some(queue) = decl.queue {
                f = f.queue(queue.into_inner());
            }
            if let Some(n) = &decl.max_attempts {
                f = f.max_attempts(*n.get_ref());
            }
            if let Some(b) = decl.backoff {
                let valid = |s: f64| s.is_finite() && (0.0..=86_400.0).contains(&s);
                if !valid(b.initial_secs) || !valid(b.max_secs) || b.initial_secs > b.max_secs {
                    let what = "initial_secs and max_secs must be 0 to 86400 seconds, initial at most max";
                    errors.push(at(span, format!("{key}.backoff"), what.into()));
                    continue;
                }
                f = f.backoff(Backoff {
                    initial: Duration::from_secs_f64(b.initial_secs),
                    max: Duration::from_secs_f64(b.max_secs),
                });
            }
            if let Err(e) = f.check_url(dev) {
                errors.push(at(url_span, format!("{key}.url"), e));
                continue;
            }
            if let Err(e) = self.registry.register_http(f, dev) {
                // Name and policy: the message names the function; point at its table.
                let field = match e {
                    crate::function::RegistryError::BadAttempts(_) => ".max_attempts",
                    crate::function::RegistryError::TooLongForInline(..) => ".timeout_secs",
                    _ => "",
                };
                errors.push(at(span.clone(), format!("{key}{field}"), e.to_string()));
            }
        }
        for (name, decl) in file.limits {
            let key = format!("limits.{}", name.get_ref());
            let (span, decl) = (decl.span(), decl.into_inner());
            let mut limit = Limit::new(name.get_ref()).on(decl.functions);
            if let Some(n) = decl.concurrency {
                limit = limit.concurrency(n);
            }
            if let Some(rate) = decl.rate_per_second {
                limit = limit.rate(rate, decl.burst.unwrap_or(1));
            }
            match decl.per.as_deref() {
                None => {}
                Some("owner") => limit = limit.per_owner(),
                Some(per) if per.starts_with("arg:") => limit = limit.per_arg(&per["arg:".len()..]),
                Some(other) => {
                    let what = format!("{other:?}: use \"owner\" or \"arg:FIELD\" (or leave it out: one global limit)");
                    errors.push(at(span, format!("{key}.per"), what));
                    continue;
                }
            }
            if let Err(e) = self.registry.limit(limit) {
                errors.push(at(span, key, e));
            }
        }
        for (name, spec) in file.workflows {
            let key = format!("workflows.{}", name.get_ref());
            let (span, spec) = (spec.span(), spec.into_inner());
            let declared = template(name.get_ref(), spec).and_then(|workflow| {
                crate::submit::check_workflow(&self.registry, &workflow)?;
                self.registry.workflow(workflow)
            });
            if let Err(e) = declared {
                errors.push(at(span, key, e));
            }
        }
        for (name, decl) in file.schedules {
            let key = format!("schedules.{}", name.get_ref());
            let (span, decl) = (decl.span(), decl.into_inner());
            let action = match (decl.function, decl.workflow) {
                (Some(function), None) => {
                    if self.registry.get(function.get_ref()).is_none() {
                        let what = format!("no function `{}` is declared", function.get_ref());
                        errors.push(at(function.span(), format!("{key}.function"), what));
                        continue;
                    }
                    let priority = decl.priority.unwrap_or(crate::function::DEFAULT_PRIORITY);
                    Action::Submit { function: function.into_inner(), args: decl.args, priority }
                }
                (None, Some(workflow)) => Action::Workflow { workflow: workflow.into_inner(), args: decl.args },
                _ => {
                    errors.push(at(span, key, "give exactly one of `function` and `workflow`".into()));
                    continue;
                }
            };
            let added = Schedule::new(name.get_ref(), &decl.cron, &decl.time_zone, action)
                .map(|s| if decl.unique { s.unique() } else { s })
                .and_then(|s| self.schedules.add(s));
            if let Err(e) = added {
                errors.push(at(span, key, e.to_string()));
            }
        }
        if let Err(e) = self.schedules.check(&self.registry) {
            errors.push(at(0..0, "schedules".into(), e.to_string()));
        }
        errors
    }
}

/// The template `name` of `spec` (the JSON shape of `POST /workflows`), built with the
/// [`crate::workflow::Step`] builders a Rust declaration uses.
fn template(name: &str, spec: crate::workflow::WorkflowSpec) -> Result<crate::workflow::Workflow, String> {
    use crate::workflow::{Step, Workflow};
    let mut workflow = Workflow::new(name);
    for s in spec.steps {
        let mut step = match (s.function, s.signal) {
            (Some(function), None) => Step::run(&s.name, function),
            (None, Some(signal)) => {
                let mut step = Step::signal(&s.name);
                match (signal.timeout_secs, signal.on_timeout) {
                    (Some(secs), default) => step = step.timeout(secs, default),
                    (None, Some(_)) => return Err(format!("step `{}`: on_timeout needs timeout_secs", s.name)),
                    (None, None) => {}
                }
                if let Some(rework) = signal.on_reject {
                    step = step.on_reject_back_to(rework.back_to, rework.max_rounds);
                }
                step
            }
            _ => return Err(format!("step `{}`: give exactly one of `function` and `signal`", s.name)),
        };
        step = step.after(s.after);
        if let Some(args) = s.args {
            step = step.args(args);
        }
        if let Some(priority) = s.priority {
            step = step.priority(priority);
        }
        if let Some(n) = s.max_attempts {
            step = step.max_attempts(n);
        }
        if s.run_on_failure {
            step = step.run_on_failure();
        }
        if let Some(field) = s.for_each {
            step = step.for_each(field, s.item_as.unwrap_or_else(|| "item".into()));
        } else if s.item_as.is_some() {
            return Err(format!("step `{}`: item_as needs for_each", s.name));
        }
        workflow = workflow.step(step);
    }
    Ok(workflow)
}

/// The dotted key of the value or key at byte `at`: the table header above it and the key on
/// its line (`functions.transcribe.url`).
fn key_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[line_start..line_end];
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    }
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim().to_owned(),
        None => trimmed.to_owned(),
    };
    match table {
        Some(t) if !key.is_empty() => format!("{t}.{key}"),
        Some(t) => t,
        None => key,
    }
}

/// `FILE:LINE:COLUMN: KEY: message` (1-based line and column).
fn render(file: &str, text: &str, e: &Located) -> String {
    let at = e.span.start.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{file}:{line}:{column}: {}: {}", e.key, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, dev: bool) -> Result<App, String> {
        let dir = std::env::temp_dir().join(format!("runq-toml-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runq.toml");
        std::fs::write(&path, text).unwrap();
        let out =
            App::new().declare_file(&path, dev).map_err(|e| e.replace(&format!("{}", path.display()), "runq.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    const GOOD: &str = r#"
[functions.transcribe]
url = "https://stt-abc.a.run.app/transcribe"
timeout_secs = 300
priority = "high"
max_attempts = 5
backoff = { initial_secs = 2, max_secs = 60 }

[functions.render]
url = "https://render.example.com/run"
queue = "heavy"
detached = true
timeout_secs = 3600

[queues.heavy]
cpu_always_allocated = true
memory = "4Gi"

[limits.stt]
functions = ["transcribe"]
concurrency = 2
per = "owner"

[schedules.nightly]
cron = "0 3 * * *"
time_zone = "Europe/Paris"
function = "transcribe"
args = { audio = "gs://talks/daily.flac" }

[workflows.speech]
steps = [
  { name = "prepare", function = "echo", args = { value = { audio = "gs://talks/1.flac" } } },
  { name = "transcribe", function = "transcribe", after = ["prepare"], priority = "low" },
  { name = "review", after = ["transcribe"], signal = { timeout_secs = 3600, on_reject = { back_to = "transcribe", max_rounds = 2 } } },
  { name = "notify", function = "echo", after = ["review"], run_on_failure = true, args = { value = "done" } },
]

[schedules.weekly-speech]
cron = "0 4 * * 1"
workflow = "speech"
"#;

    #[test]
    fn a_good_file_declares_functions_queues_limits_and_schedules() {
        let app = load(GOOD, false).unwrap();
        let stt = app.registry().get("transcribe").unwrap().policy().clone();
        assert_eq!((stt.priority, stt.max_attempts), (Priority::High, 5));
        assert_eq!(stt.hard_time_limit, Duration::from_secs(300));
        assert_eq!(stt.backoff.max, Duration::from_secs(60));
        let render = app.registry().get("render").unwrap().policy().clone();
        assert_eq!((render.queue, render.detached), (Some("heavy"), true));
        let heavy = app.queues().iter().find(|q| q.name == "heavy").unwrap();
        assert!(heavy.cpu_always_allocated && heavy.memory == "4Gi");
        assert_eq!(app.registry().limits().len(), 1);
        assert!(app.schedules().iter().any(|s| s.name == "nightly"));
        let speech = app.registry().workflows().get("speech").expect("the workflow is declared");
        assert_eq!(speech.steps.len(), 4);
        assert_eq!(speech.steps[2].signal.as_ref().unwrap().on_reject.as_ref().unwrap().max_rounds, 2);
        assert!(speech.steps[3].run_on_failure);
        assert!(app.schedules().iter().any(|s| s.name == "weekly-speech"));
        app.check().unwrap();
    }

    #[test]
    fn every_error_names_the_file_line_and_key() {
        let cases = [
            (
                "[functions.f]\nurl = \"https://x.example/\"\nurll = 1\n",
                "runq.toml:3:1: functions.f.urll: unknown field `urll`",
            ),
            (
                "[functions.f]\nurl = \"http://x.example/\"\n",
                "runq.toml:2:7: functions.f.url: \"http://x.example/\" is not https://",
            ),
            (
                "[functions.f]\nurl = \"https://a.example/\"\n\n[functions.f]\nurl = \"https://b.example/\"\n",
                "runq.toml:4:",
            ),
            (
                "[functions.echo]\nurl = \"https://x.example/\"\n",
                "runq.toml:1:12: functions.echo: a function of this name exists already",
            ),
            (
                "[functions.f]\nurl = \"https://x.example/\"\nmax_attempts = \"five\"\n",
                "runq.toml:3:16: functions.f.max_attempts:",
            ),
            ("[functions.f]\nurl = \"https://x.example/\"\ntimeout_secs = 900\n", "runq.toml:1:"),
            (
                "[functions.f]\nurl = \"https://x.example/\"\nqueue = \"nope\"\n",
                "runq.toml:3:9: functions.f.queue: queue `nope` is not declared",
            ),
            (
                "[limits.l]\nfunctions = [\"ghost\"]\nconcurrency = 1\n",
                "runq.toml:1:1: limits.l: limit `l` applies to `ghost`",
            ),
            (
                "[schedules.s]\ncron = \"not a cron\"\nfunction = \"echo\"\nargs = { value = 1 }\n",
                "runq.toml:1:1: schedules.s:",
            ),
            (
                "[schedules.s]\ncron = \"0 3 * * *\"\nfunction = \"ghost\"\n",
                "runq.toml:3:12: schedules.s.function: no function `ghost`",
            ),
            ("[widgets]\n", "runq.toml:1:2: widgets: unknown field `widgets`"),
            (
                "[workflows.w]\nsteps = [{ name = \"a\", function = \"ghost\" }]\n",
                "runq.toml:1:1: workflows.w: workflow `w`:",
            ),
            (
                "[workflows.w]\nsteps = [{ name = \"a\", fn = \"echo\" }]\n",
                "runq.toml:2:24: workflows.w.steps: unknown field `fn`",
            ),
            (
                "[workflows.w]\nsteps = [{ name = \"a\", function = \"echo\", signal = {} }]\n",
                "runq.toml:1:1: workflows.w: step `a`: give exactly one",
            ),
        ];
        for (text, expected) in cases {
            let err = load(text, false).err().unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(err.starts_with(expected), "{text:?}\n  got:      {err}\n  expected: {expected}...");
        }
        // Plain http:// is for `runq dev`, as in the example's file.
        load("[functions.f]\nurl = \"http://127.0.0.1:9000/run\"\n", true).unwrap();
        let example = include_str!("../../examples/speech_to_text/runq.toml");
        load(example, true).unwrap().check().unwrap();
        assert!(load(example, false).err().unwrap().contains("functions.transcribe.url"));
    }
}

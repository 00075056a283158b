//! The one check of a new job, whoever asks for it: a client (`POST /jobs`, `POST /jobs:batch`),
//! a schedule (at start-up and when it fires) or a run spawning children
//! ([`crate::function::Context::spawn`]). [`validate`] turns a [`Submission`] into the
//! [`JobSpec`] the store inserts, or says which field is wrong and why ([`Invalid`]); each caller
//! maps that to its own error.

use serde_json::Value;
use serde_json::value::RawValue;

use crate::function::{MAX_ATTEMPTS_LIMIT, Registry};
use crate::job::UnknownPriority;
use crate::store::JobSpec;

mod workflow;

pub use workflow::{check_workflow, plan_workflow};

/// Longest accepted `delay_seconds`: 30 days.
pub const MAX_DELAY_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
/// Longest accepted `debounce_seconds`: 30 days, like a delay.
pub const MAX_DEBOUNCE_SECONDS: f64 = MAX_DELAY_SECONDS;
/// Longest accepted `unique_key`, as for an `Idempotency-Key`.
pub const MAX_UNIQUE_KEY: usize = 255;

/// A new job as asked for, before it is checked. `None` fields take the function's policy.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// Who submits it (a limit per owner takes its key from here).
    pub owner: &'a str,
    /// A registered function's name.
    pub function: &'a str,
    pub args: &'a RawValue,
    /// A priority's name (`high`, `medium`, `low`).
    pub priority: Option<&'a str>,
    pub max_attempts: Option<u32>,
    /// Not run before this many seconds from now.
    pub delay_seconds: Option<f64>,
    /// At most one live job per owner with this key.
    pub unique_key: Option<&'a str>,
    /// With `unique_key`: run once, this many seconds after the submits for the key stopped.
    pub debounce_seconds: Option<f64>,
}

impl<'a> Submission<'a> {
    /// `function` with `args` for `owner`, everything else the function's defaults.
    pub fn new(owner: &'a str, function: &'a str, args: &'a RawValue) -> Self {
        Self {
            owner,
            function,
            args,
            priority: None,
            max_attempts: None,
            delay_seconds: None,
            unique_key: None,
            debounce_seconds: None,
        }
    }
}

/// Why a submission was refused. The message (`Display`) is for whoever asked; [`Invalid::field`]
/// names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// No function of that name is registered.
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    /// The args are over the caller's size limit.
    #[error("args are {bytes} bytes; the limit is {limit}")]
    ArgsTooLarge { bytes: usize, limit: usize },
    /// Any other field that can't be accepted.
    #[error("{message}")]
    Field { field: &'static str, message: String },
}

impl Invalid {
    /// The field at fault: `function`, `args`, `priority`, `max_attempts`, `delay_seconds`,
    /// `unique_key` or `debounce_seconds`.
    pub fn field(&self) -> &'static str {
        match self {
            Invalid::UnknownFunction(_) => "function",
            Invalid::ArgsTooLarge { .. } => "args",
            Invalid::Field { field, .. } => field,
        }
    }

    fn of(field: &'static str, message: String) -> Self {
        Invalid::Field { field, message }
    }
}

/// Checks `req` against the registered functions, in this order: the function exists, the args
/// fit in `max_args_bytes` (`None`: no limit, for args that don't come in a request body) and
/// can be stored, the function accepts them, the priority is known, `max_attempts` is in
/// 1..=[`MAX_ATTEMPTS_LIMIT`], `delay_seconds` in 0..=[`MAX_DELAY_SECONDS`], `unique_key` 1 to
/// [`MAX_UNIQUE_KEY`] visible ASCII characters (an `Idempotency-Key`'s rules) and
/// `debounce_seconds` over 0 and at most [`MAX_DEBOUNCE_SECONDS`], only with a `unique_key` and
/// without a `delay_seconds` (the debounce is the delay).
pub fn validate<'a>(
    registry: &Registry,
    max_args_bytes: Option<usize>,
    req: &Submission<'a>,
) -> Result<JobSpec<'a>, Invalid> {
    let function = registry.get(req.function).ok_or_else(|| Invalid::UnknownFunction(req.function.to_owned()))?;
    let policy = function.policy();
    let bytes = req.args.get().len();
    if let Some(limit) = max_args_bytes
        && bytes > limit
    {
        return Err(Invalid::ArgsTooLarge { bytes, limit });
    }
    storable("args", req.args)?;
    function
        .validate(req.args)
        .map_err(|e| Invalid::of("args", format!("invalid args for `{}`: {e}", req.function)))?;
    let priority = match req.priority {
        None => policy.priority,
        Some(p) => p.parse().map_err(|e: UnknownPriority| Invalid::of("priority", e.to_string()))?,
    };
    let max_attempts = req.max_attempts.unwrap_or(policy.max_attempts);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        return Err(Invalid::of("max_attempts", format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}")));
    }
    let delay_secs = match req.delay_seconds {
        None => None,
        Some(d) if d.is_finite() && (0.0..=MAX_DELAY_SECONDS).contains(&d) => Some(d),
        Some(_) => return Err(Invalid::of("delay_seconds", format!("must be between 0 and {MAX_DELAY_SECONDS}"))),
    };
    if let Some(key) = req.unique_key
        && (!(1..=MAX_UNIQUE_KEY).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Invalid::of("unique_key", format!("must be 1 to {MAX_UNIQUE_KEY} visible ASCII characters")));
    }
    let (delay_secs, debounce_secs) = match req.debounce_seconds {
        None => (delay_secs, None),
        Some(_) if req.unique_key.is_none() => {
            return Err(Invalid::of(
                "debounce_seconds",
                "needs a unique_key: it debounces the submits of one key".into(),
            ));
        }
        Some(_) if delay_secs.is_some() => {
            return Err(Invalid::of(
                "debounce_seconds",
                "can't be given with delay_seconds: the debounce is the delay".into(),
            ));
        }
        Some(d) if d.is_finite() && d > 0.0 && d <= MAX_DEBOUNCE_SECONDS => (Some(d), Some(d)),
        Some(_) => {
            return Err(Invalid::of("debounce_seconds", format!("must be over 0 and at most {MAX_DEBOUNCE_SECONDS}")));
        }
    };
    let limit_keys = registry.limit_keys(req.function, req.owner, req.args).map_err(|e| Invalid::of("args", e))?;
    Ok(JobSpec {
        function: function.name(),
        priority,
        queue: policy.queue,
        args: req.args,
        max_attempts: max_attempts as i32,
        delay_secs,
        unique_key: req.unique_key,
        debounce_secs,
        limit_keys,
    })
}

/// Refuses JSON that `jsonb` can't store: a NUL (`\u0000`) in a string or key, or a UTF-16
/// surrogate escape without its pair.
///
/// Raw JSON text can hold a NUL or a surrogate only as a `\u` escape, so the text is scanned for
/// `\u0000` and `\uD800`..`\uDFFF` first; only when one may be there is it parsed and walked, so
/// an escaped backslash (`\\u0000`, the six characters `\u0000`) is told from a real escape and a
/// valid surrogate pair (an emoji) from a lone half.
fn storable(field: &'static str, raw: &RawValue) -> Result<(), Invalid> {
    if !may_hold_unstorable(raw.get().as_bytes()) {
        return Ok(());
    }
    let refuse = |what: &str| Invalid::of(field, format!("{field} {what}, which can't be stored"));
    // serde_json refuses a lone surrogate when it decodes the string (and nesting over 128 deep,
    // which is then refused too: it can't be checked).
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| refuse(&format!("hold a \\u escape of a lone surrogate or can't be checked for one ({e})")))?;
    if crate::store::holds_nul(&value) {
        return Err(refuse("contain a NUL character (\\u0000) in a string or key"));
    }
    Ok(())
}

/// Whether `raw` has a literal NUL, or a `\u` escape of U+0000 or of a surrogate, perhaps
/// preceded by an escaped backslash (a false alarm that [`storable`] then clears).
fn may_hold_unstorable(raw: &[u8]) -> bool {
    raw.contains(&0)
        || raw.windows(6).any(|w| {
            w[0] == b'\\'
                && w[1] == b'u'
                && (w[2..].eq_ignore_ascii_case(b"0000")
                    || (w[2].eq_ignore_ascii_case(&b'd') && (b'8'..=b'f').contains(&w[3].to_ascii_lowercase())))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Priority;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn check(json: &str) -> bool {
        storable("args", &raw(json)).is_ok()
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused_anywhere() {
        for bad in [
            r#"{"value":"a\u0000b"}"#,
            r#"{"a\u0000":1}"#,
            r#"{"deep":[1,{"x":["ok","\u0000"]}]}"#,
            r#""\u0000""#,
            r#"{"value":"\\\u0000"}"#,
            r#"{"value":"\ud800"}"#,
            r#"{"value":"\uDC00x"}"#,
            r#"{"\ud83d":1}"#,
        ] {
            assert!(!check(bad), "{bad} is refused");
        }
    }

    #[test]
    fn look_alikes_are_accepted() {
        for good in [
            r#"{}"#,
            r#"{"value":"\\u0000"}"#,
            r#"{"value":"\\\\u0000"}"#,
            r#"{"value":"\u0001 \u00e9 \u1000"}"#,
            r#"{"value":"\ud83d\ude00"}"#,
            r#"{"value":"\\ud800"}"#,
            r#"{"value":"u0000 0000"}"#,
        ] {
            assert!(check(good), "{good} is accepted");
        }
    }

    #[test]
    fn each_field_is_named_and_defaults_come_from_the_policy() {
        let registry = Registry::builtin();
        let args = raw(r#"{"seconds": 1}"#);
        let spec = validate(&registry, Some(1024), &Submission::new("alice", "sleep", &args)).unwrap();
        let policy = registry.get("sleep").unwrap().policy();
        assert_eq!((spec.function, spec.priority, spec.queue), ("sleep", policy.priority, policy.queue));
        assert_eq!(spec.max_attempts, policy.max_attempts as i32);
        assert_eq!(spec.delay_secs, None);

        let field = |req: Submission<'_>, limit| validate(&registry, limit, &req).unwrap_err().field();
        let ok = Submission::new("alice", "sleep", &args);
        assert_eq!(field(Submission { function: "nope", ..ok }, None), "function");
        assert_eq!(field(ok, Some(3)), "args");
        let bad = raw(r#"{"seconds": "long"}"#);
        assert_eq!(field(Submission { args: &bad, ..ok }, None), "args");
        assert_eq!(field(Submission { priority: Some("urgent"), ..ok }, None), "priority");
        assert_eq!(field(Submission { max_attempts: Some(0), ..ok }, None), "max_attempts");
        assert_eq!(field(Submission { delay_seconds: Some(f64::NAN), ..ok }, None), "delay_seconds");
        for bad in ["", "a b", "é", "a\u{0}b"] {
            assert_eq!(field(Submission { unique_key: Some(bad), ..ok }, None), "unique_key", "{bad:?}");
        }
        let long = "k".repeat(MAX_UNIQUE_KEY + 1);
        assert_eq!(field(Submission { unique_key: Some(&long), ..ok }, None), "unique_key");
        assert_eq!(field(Submission { debounce_seconds: Some(1.0), ..ok }, None), "debounce_seconds");
        let keyed = Submission { unique_key: Some("k"), ..ok };
        for bad in [0.0, -1.0, f64::INFINITY, MAX_DEBOUNCE_SECONDS + 1.0] {
            assert_eq!(field(Submission { debounce_seconds: Some(bad), ..keyed }, None), "debounce_seconds");
        }
        let both = Submission { debounce_seconds: Some(1.0), delay_seconds: Some(1.0), ..keyed };
        assert_eq!(field(both, None), "debounce_seconds");
        let spec = validate(&registry, None, &Submission { debounce_seconds: Some(2.5), ..keyed }).unwrap();
        assert_eq!((spec.unique_key, spec.delay_secs, spec.debounce_secs), (Some("k"), Some(2.5), Some(2.5)));
        let spec = validate(&registry, None, &Submission { priority: Some("high"), delay_seconds: Some(5.0), ..ok });
        assert_eq!(spec.map(|s| (s.priority, s.delay_secs)).unwrap(), (Priority::High, Some(5.0)));
    }
}

//! Video accessibility in seven phases, as a workflow:
//!
//! ```text
//! ingest → captions → audio_description → qc_review (a person) → translate ×N → synthesize ×N → deliver
//!              ^                              | reject (with notes), at most 2 rounds
//!              +------------------------------+
//! ```
//!
//! `qc_review` is a signal step: the workflow waits there until someone approves, rejects, or
//! approves with an edited caption file (`{"decision": "approve", "data": {"captions": "..."}}`),
//! which translation then uses in place of the generated one. A rejection sends the workflow
//! back to `captions` with the reviewer's notes as its input `rework`, then to review again. A
//! review that doesn't come within its timeout fails the step (or, declared so, approves).
//! Translation fans out over the `languages` of the workflow's args, one job per language;
//! synthesis runs per language after its translation; delivery fans in over all of them.
//!
//! The work is simulated, deterministic, so the example runs anywhere.

use std::time::Duration;

use runq::function::{Context, Function, FunctionError, Registry};
use runq::workflow::{Signal, Step, Workflow};
use serde::Deserialize;
use serde_json::{Value, json};

pub const NAME: &str = "video_accessibility";
/// How long the declared template waits for a review.
pub const REVIEW_TIMEOUT_SECS: f64 = 2.0 * 24.0 * 3600.0;

#[derive(Deserialize)]
pub struct VideoArgs {
    pub video: String,
    /// The language a fan-out member works on.
    #[serde(default)]
    pub language: Option<String>,
}

async fn pace(ctx: &Context, what: &str) -> Result<(), FunctionError> {
    for step in 1..=2 {
        if ctx.is_cancelled() {
            return Err(FunctionError::Cancelled);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        ctx.progress(step as f32 / 2.0, what.to_owned());
    }
    Ok(())
}

macro_rules! phase {
    ($ty:ident, $name:literal, |$ctx:ident, $args:ident| $body:expr) => {
        pub struct $ty;
        impl Function for $ty {
            type Args = VideoArgs;
            type Output = Value;
            fn name(&self) -> &'static str {
                $name
            }
            async fn run(&self, $ctx: Context, $args: VideoArgs) -> Result<Value, FunctionError> {
                pace(&$ctx, $name).await?;
                $body
            }
        }
    };
}

phase!(Ingest, "ingest", |_ctx, args| Ok(json!({ "video": args.video, "duration_secs": 42 })));

phase!(Captions, "captions", |ctx, args| {
    let inputs = ctx.inputs().await?;
    // A rework: the reviewer's notes of the last rejection, and how many came before.
    let rework = &inputs["rework"];
    let revision = rework["round"].as_i64().map_or(1, |r| r + 2);
    let notes = rework["data"]["notes"].as_str().unwrap_or("");
    let mut text = format!("captions of {} (revision {revision})", args.video);
    if !notes.is_empty() {
        text.push_str(&format!(", fixed: {notes}"));
    }
    Ok(json!({ "captions": text, "revision": revision }))
});

phase!(AudioDescription, "audio_description", |ctx, _args| {
    let captions = ctx.input("captions").await?.ok_or_else(|| FunctionError::fatal("no captions"))?;
    Ok(json!({ "description": format!("described: {}", captions["captions"].as_str().unwrap_or_default()) }))
});

phase!(Translate, "translate", |ctx, args| {
    let language = args.language.ok_or_else(|| FunctionError::fatal("translate runs per language"))?;
    // An edited caption file from the review wins over the generated one.
    let review = ctx.input("qc_review").await?.unwrap_or_default();
    let captions = match review["data"]["captions"].as_str() {
        Some(edited) => edited.to_owned(),
        None => {
            let generated = ctx.input("captions").await?.ok_or_else(|| FunctionError::fatal("no captions"))?;
            generated["captions"].as_str().unwrap_or_default().to_owned()
        }
    };
    Ok(json!({ "language": language, "text": format!("[{language}] {captions}") }))
});

phase!(Synthesize, "synthesize", |ctx, args| {
    let language = args.language.ok_or_else(|| FunctionError::fatal("synthesize runs per language"))?;
    let translation = ctx.input("translate").await?.ok_or_else(|| FunctionError::fatal("no translation"))?;
    Ok(json!({ "language": language, "audio": format!("gs://media/{}/{language}.wav", args.video),
               "from": translation["text"] }))
});

phase!(Deliver, "deliver", |ctx, args| {
    let inputs = ctx.inputs().await?;
    let tracks: Vec<Value> = inputs["synthesize"]
        .as_array()
        .ok_or_else(|| FunctionError::fatal("no synthesized tracks"))?
        .iter()
        .map(|t| t["result"].clone())
        .collect();
    Ok(json!({ "video": args.video, "tracks": tracks }))
});

/// The template with a review timeout of `timeout_secs`, which fails the review, or approves
/// when `approve_on_timeout`.
pub fn workflow(timeout_secs: f64, approve_on_timeout: bool) -> Workflow {
    let default = approve_on_timeout.then(|| Signal { decision: runq::workflow::Decision::Approve, data: json!({}) });
    Workflow::new(NAME)
        .step(Step::run("ingest", "ingest"))
        .step(Step::run("captions", "captions").after(["ingest"]))
        .step(Step::run("audio_description", "audio_description").after(["captions"]))
        .step(
            Step::signal("qc_review")
                .after(["audio_description"])
                .timeout(timeout_secs, default)
                .on_reject_back_to("captions", 2),
        )
        .step(Step::run("translate", "translate").after(["captions", "qc_review"]).for_each("languages", "language"))
        .step(Step::run("synthesize", "synthesize").after(["translate"]).for_each("languages", "language"))
        .step(Step::run("deliver", "deliver").after(["synthesize"]))
}

/// Registers the seven phases' functions and the template (two days to review).
pub fn register(registry: &mut Registry) {
    registry.register(Ingest).expect("ingest");
    registry.register(Captions).expect("captions");
    registry.register(AudioDescription).expect("audio_description");
    registry.register(Translate).expect("translate");
    registry.register(Synthesize).expect("synthesize");
    registry.register(Deliver).expect("deliver");
    registry.workflow(workflow(REVIEW_TIMEOUT_SECS, false)).expect("video_accessibility");
}

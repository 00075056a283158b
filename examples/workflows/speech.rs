//! Speech to text as a workflow: `transcribe` (high) → `summarize` (medium) → `index` (low).
//! Each step reads its parent's result by step name (`ctx.input("transcribe")`); a frontend polls
//! one id, `GET /workflows/{id}`, and sees which step runs and the overall progress.
//!
//! The work is simulated (deterministic text from the audio URL) so the example runs anywhere.

use std::time::Duration;

use runq::function::{Context, Function, FunctionError, Registry};
use runq::workflow::{Step, Workflow};
use serde::Deserialize;
use serde_json::{Value, json};

/// The template's name: `POST /workflows {"workflow": "speech_to_text", "args": {"audio": ...}}`.
pub const NAME: &str = "speech_to_text";

#[derive(Deserialize)]
pub struct SpeechArgs {
    /// Where the recording is (a `gs://` URI in production).
    pub audio: String,
    /// Simulated work per progress step, in milliseconds.
    #[serde(default = "default_pace")]
    pub pace_ms: u64,
}

fn default_pace() -> u64 {
    20
}

async fn work(ctx: &Context, pace_ms: u64, what: &str) -> Result<(), FunctionError> {
    for step in 1..=4 {
        tokio::select! {
            () = ctx.cancelled() => return Err(FunctionError::Cancelled),
            () = tokio::time::sleep(Duration::from_millis(pace_ms)) => {}
        }
        ctx.progress(step as f32 / 4.0, format!("{what}: part {step} of 4"));
    }
    Ok(())
}

/// Turns the audio into a transcript.
pub struct Transcribe;

impl Function for Transcribe {
    type Args = SpeechArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "transcribe"
    }
    fn priority(&self) -> runq::job::Priority {
        runq::job::Priority::High
    }
    async fn run(&self, ctx: Context, args: SpeechArgs) -> Result<Value, FunctionError> {
        work(&ctx, args.pace_ms, "transcribing").await?;
        let words: Vec<String> =
            args.audio.split(['/', '.', '-', '_']).filter(|w| !w.is_empty()).map(str::to_owned).collect();
        Ok(json!({ "transcript": words.join(" "), "words": words.len() }))
    }
}

/// Summarizes the transcript of the `transcribe` step.
pub struct Summarize;

impl Function for Summarize {
    type Args = SpeechArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "summarize"
    }
    async fn run(&self, ctx: Context, args: SpeechArgs) -> Result<Value, FunctionError> {
        let transcript =
            ctx.input("transcribe").await?.ok_or_else(|| FunctionError::fatal("no transcript to summarize"))?;
        work(&ctx, args.pace_ms, "summarizing").await?;
        let text = transcript["transcript"].as_str().unwrap_or_default();
        let summary: String = text.split(' ').take(3).collect::<Vec<_>>().join(" ");
        Ok(json!({ "summary": summary, "from_words": transcript["words"] }))
    }
}

/// Indexes the summary for search.
pub struct Index;

impl Function for Index {
    type Args = SpeechArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "index"
    }
    fn priority(&self) -> runq::job::Priority {
        runq::job::Priority::Low
    }
    async fn run(&self, ctx: Context, args: SpeechArgs) -> Result<Value, FunctionError> {
        let summary = ctx.input("summarize").await?.ok_or_else(|| FunctionError::fatal("no summary to index"))?;
        work(&ctx, args.pace_ms, "indexing").await?;
        Ok(json!({ "indexed": summary["summary"], "document": format!("doc:{}", args.audio) }))
    }
}

/// The template: each step on its function's queue (high, medium, low).
pub fn workflow() -> Workflow {
    Workflow::new(NAME)
        .step(Step::run("transcribe", "transcribe"))
        .step(Step::run("summarize", "summarize").after(["transcribe"]))
        .step(Step::run("index", "index").after(["summarize"]))
}

/// Registers the functions and the template.
pub fn register(registry: &mut Registry) {
    registry.register(Transcribe).expect("transcribe");
    registry.register(Summarize).expect("summarize");
    registry.register(Index).expect("index");
    registry.workflow(workflow()).expect("speech_to_text");
}

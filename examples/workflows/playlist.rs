//! Playlist indexing: one orchestrator job lists the playlist's videos (known only when it runs),
//! fans out one `index_video` job per video, and declares a continuation, `playlist_summary`,
//! which runs once after every video has finished, with their outcomes. While the videos run,
//! the orchestrator's `GET /jobs/{id}/status` shows `workflow: {finished, total}` and
//! `GET /workflows/{id}` (the same id) each step's progress.
//!
//! A fan-in of 1,000 doesn't carry 1,000 results inline: the continuation gets a summary and
//! pages through its parents' results (`ctx.parents`).

use runq::function::{ChildJob, Context, Function, FunctionError, Registry};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
pub struct PlaylistArgs {
    pub playlist: String,
    /// How many videos the (simulated) playlist API lists.
    pub videos: usize,
    /// Every n-th video fails to index (0: none), to show outcomes in the summary.
    #[serde(default)]
    pub fail_every: usize,
}

/// Lists the playlist and fans out.
pub struct IndexPlaylist;

impl Function for IndexPlaylist {
    type Args = PlaylistArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "index_playlist"
    }
    fn check(&self, args: &PlaylistArgs) -> Result<(), String> {
        if !(1..=1000).contains(&args.videos) {
            return Err("a playlist has 1 to 1000 videos".into());
        }
        Ok(())
    }
    async fn run(&self, ctx: Context, args: PlaylistArgs) -> Result<Value, FunctionError> {
        // The list comes from the playlist API at run time.
        let videos: Vec<String> = (0..args.videos).map(|i| format!("{}-v{i:04}", args.playlist)).collect();
        ctx.progress(0.5, format!("queueing {} videos", videos.len()));
        let children = videos
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let broken = args.fail_every > 0 && (i + 1) % args.fail_every == 0;
                ChildJob::new("index_video", json!({ "video": v, "broken": broken }))
            })
            .collect();
        let summary = ChildJob::new("playlist_summary", json!({ "playlist": args.playlist }));
        let spawned = ctx.spawn_then("index_video", children, summary).await?;
        Ok(json!({ "videos": spawned.children.len(), "summary_job": spawned.continuation }))
    }
}

#[derive(Deserialize)]
pub struct VideoArgs {
    pub video: String,
    #[serde(default)]
    pub broken: bool,
}

/// Indexes one video.
pub struct IndexVideo;

impl Function for IndexVideo {
    type Args = VideoArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "index_video"
    }
    fn max_attempts(&self) -> u32 {
        1
    }
    async fn run(&self, _ctx: Context, args: VideoArgs) -> Result<Value, FunctionError> {
        if args.broken {
            return Err(FunctionError::fatal(format!("{}: no captions track", args.video)));
        }
        Ok(json!({ "video": args.video, "words": args.video.len() }))
    }
}

#[derive(Deserialize)]
pub struct SummaryArgs {
    pub playlist: String,
}

/// The continuation: reads every video's outcome, a page at a time.
pub struct PlaylistSummary;

impl Function for PlaylistSummary {
    type Args = SummaryArgs;
    type Output = Value;
    fn name(&self) -> &'static str {
        "playlist_summary"
    }
    async fn run(&self, ctx: Context, args: SummaryArgs) -> Result<Value, FunctionError> {
        let inputs = ctx.inputs().await?;
        let (mut succeeded, mut failed, mut words, mut seen) = (0u64, 0u64, 0u64, 0u64);
        let mut after = None;
        loop {
            let page = ctx.parents(after, 200).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.job_id);
            for parent in &page {
                seen += 1;
                match parent.status {
                    runq::job::Status::Succeeded => {
                        succeeded += 1;
                        words += parent.result.as_ref().and_then(|r| r["words"].as_u64()).unwrap_or(0);
                    }
                    _ => failed += 1,
                }
            }
        }
        Ok(json!({ "playlist": args.playlist, "videos": seen, "succeeded": succeeded, "failed": failed,
                   "words": words, "inline": inputs["index_video"] }))
    }
}

/// Registers the three functions.
pub fn register(registry: &mut Registry) {
    registry.register(IndexPlaylist).expect("index_playlist");
    registry.register(IndexVideo).expect("index_video");
    registry.register(PlaylistSummary).expect("playlist_summary");
}

//! A runq application of your own: index a playlist video by video.
//!
//! `index_playlist` fans out one `index_video` job per video (on a `heavy` queue of its own,
//! served by a bigger worker service), reports progress, and a nightly schedule re-indexes the
//! featured playlist. Run everything locally with
//!
//! ```sh
//! cargo run --example playlist -- dev
//! runq submit index_playlist --args '{"playlist": "pl-1", "videos": ["a", "b", "c"]}' --wait
//! ```
//!
//! and deploy the same binary for every role (`api`, `worker --queue heavy`, ...).

use std::time::Duration;

use runq::function::{ChildJob, Context, FunctionError};
use runq::infra::QueueSpec;
use runq::job::Priority;
use runq::{App, Function};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Fans a playlist out into one job per video.
struct IndexPlaylist;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaylistArgs {
    playlist: String,
    videos: Vec<String>,
}

impl Function for IndexPlaylist {
    type Args = PlaylistArgs;
    type Output = serde_json::Value;

    fn name(&self) -> &'static str {
        "index_playlist"
    }

    fn check(&self, args: &PlaylistArgs) -> Result<(), String> {
        if args.videos.is_empty() || args.videos.len() > 1000 {
            return Err("a playlist has 1 to 1000 videos".into());
        }
        Ok(())
    }

    async fn run(&self, ctx: Context, args: PlaylistArgs) -> Result<Self::Output, FunctionError> {
        ctx.progress(0.0, format!("queueing {} videos", args.videos.len()));
        let children = args
            .videos
            .iter()
            .map(|video| ChildJob::new("index_video", json!({ "playlist": args.playlist, "video": video })))
            .collect();
        // Created only while this run still holds its claim; `GET /jobs?parent=ID` lists them.
        let ids = ctx.spawn(children).await?;
        Ok(json!({ "playlist": args.playlist, "children": ids }))
    }
}

/// Indexes one video: slow, CPU-heavy work on a queue of its own.
struct IndexVideo;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VideoArgs {
    playlist: String,
    video: String,
}

#[derive(Serialize)]
struct Indexed {
    video: String,
    words: usize,
}

impl Function for IndexVideo {
    type Args = VideoArgs;
    type Output = Indexed;

    fn name(&self) -> &'static str {
        "index_video"
    }

    fn queue(&self) -> Option<&'static str> {
        Some("heavy")
    }

    fn max_attempts(&self) -> u32 {
        5
    }

    fn hard_time_limit(&self) -> Duration {
        Duration::from_secs(300)
    }

    async fn run(&self, ctx: Context, args: VideoArgs) -> Result<Indexed, FunctionError> {
        ctx.progress(0.1, format!("fetching {} from {}", args.video, args.playlist));
        // CPU-bound work goes on a blocking thread, so progress and heartbeats keep flowing.
        let video = args.video.clone();
        let words = tokio::task::spawn_blocking(move || video.len() * 1000).await.map_err(FunctionError::retryable)?;
        if ctx.is_cancelled() {
            return Err(FunctionError::Cancelled);
        }
        ctx.progress(1.0, "indexed");
        Ok(Indexed { video: args.video, words })
    }
}

fn main() -> std::process::ExitCode {
    App::new()
        .function(IndexPlaylist)
        .function(IndexVideo)
        .queue(QueueSpec { memory: "4Gi".into(), ..QueueSpec::custom("heavy") })
        .schedule(
            "nightly-featured",
            "30 2 * * *",
            "Europe/Paris",
            "index_playlist",
            json!({ "playlist": "featured", "videos": ["intro"] }),
            Priority::Low,
        )
        .run()
}

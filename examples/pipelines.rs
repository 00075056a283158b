//! The three pipelines of `examples/workflows/` in one runq application:
//!
//! - `speech_to_text`: transcribe → summarize → index, one id to poll;
//! - `video_accessibility`: seven phases with a person's review, a fan-out per language and a fan-in;
//! - `index_playlist`: a run-time fan-out of up to 1,000 videos with one continuation.
//!
//! ```sh
//! cargo run --example pipelines -- dev
//! runq workflow submit speech_to_text --args '{"audio": "gs://talks/keynote.flac"}' --wait
//! runq workflow submit video_accessibility --args '{"video": "v1", "languages": ["fr", "de"]}'
//! runq workflow signal WORKFLOW_ID qc_review --decision approve
//! runq submit index_playlist --args '{"playlist": "pl", "videos": 1000}'
//! ```

#[path = "workflows/playlist.rs"]
mod playlist;
#[path = "workflows/speech.rs"]
mod speech;
#[path = "workflows/video.rs"]
mod video;

fn main() -> std::process::ExitCode {
    runq::App::new()
        .with_registry(|registry| {
            speech::register(registry);
            video::register(registry);
            playlist::register(registry);
        })
        .run()
}

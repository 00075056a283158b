//! `runq workflow submit|status|signal|cancel`: workflows from the command line; `--wait` prints
//! each step's status and progress as they change, until the workflow ends.

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::{ClientError, Connection, EXIT_JOB_FAILED, EXIT_SUCCEEDED, print_json, read_json};
use crate::client::http::ApiClient;

/// `runq workflow ...`.
#[derive(Args, Debug)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    pub command: WorkflowCommand,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Submit a workflow: a template's name, or @FILE holding `{"steps": [...]}`.
    Submit {
        /// A template declared in the application, or @FILE with the steps as JSON.
        workflow: String,
        /// The workflow's args as JSON, or @FILE.
        #[arg(long)]
        args: Option<String>,
        /// Follow it to the end, a line per change; exit 0 if it succeeds, 1 otherwise.
        #[arg(long)]
        wait: bool,
    },
    /// Print a workflow (GET /workflows/ID); with --wait, follow it to the end.
    Status {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Send a decision to a waiting signal step.
    Signal {
        id: String,
        step: String,
        /// approve or reject.
        #[arg(long)]
        decision: String,
        /// Data for the steps after it (an edited file, a reviewer's notes), as JSON or @FILE.
        #[arg(long)]
        data: Option<String>,
    },
    /// Cancel a workflow: every step not yet finished.
    Cancel { id: String },
    /// Retry a failed or cancelled workflow from where it stopped; with --wait, follow it.
    Retry {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

pub(super) async fn run(a: WorkflowArgs) -> Result<u8, ClientError> {
    let api = a.connection.client()?;
    match a.command {
        WorkflowCommand::Submit { workflow, args, wait } => {
            let mut body = match workflow.strip_prefix('@') {
                Some(_) => read_json(&workflow, "the workflow")?,
                None => serde_json::json!({ "workflow": workflow }),
            };
            if let Some(args) = args {
                body["args"] = read_json(&args, "--args")?;
            }
            let view = api.call(Method::POST, &["workflows"], Some(&body)).await?;
            if !wait {
                print_json(&view);
                return Ok(EXIT_SUCCEEDED);
            }
            let id = id_of(&view)?;
            eprintln!("submitted workflow {id}");
            follow(&api, &id).await
        }
        WorkflowCommand::Status { id, wait } => {
            if wait {
                return follow(&api, &id).await;
            }
            print_json(&api.call(Method::GET, &["workflows", &id], None).await?);
            Ok(EXIT_SUCCEEDED)
        }
        WorkflowCommand::Signal { id, step, decision, data } => {
            let mut body = serde_json::json!({ "decision": decision });
            if let Some(data) = data {
                body["data"] = read_json(&data, "--data")?;
            }
            let path = ["workflows", id.as_str(), "steps", step.as_str(), "signal"];
            print_json(&api.call(Method::POST, &path, Some(&body)).await?);
            Ok(EXIT_SUCCEEDED)
        }
        WorkflowCommand::Cancel { id } => {
            print_json(&api.call(Method::POST, &["workflows", &id, "cancel"], None).await?);
            Ok(EXIT_SUCCEEDED)
        }
        WorkflowCommand::Retry { id, wait } => {
            let view = api.call(Method::POST, &["workflows", &id, "retry"], None).await?;
            if !wait {
                print_json(&view);
                return Ok(EXIT_SUCCEEDED);
            }
            eprintln!("retried workflow {id}");
            follow(&api, &id).await
        }
    }
}

fn id_of(view: &Value) -> Result<String, ClientError> {
    view["id"].as_str().map(str::to_owned).ok_or_else(|| ClientError::Usage("the API answered without an id".into()))
}

/// One line: the workflow's state and progress, then each step's.
pub fn line(view: &Value) -> String {
    let pct = |v: &Value| (v["progress"].as_f64().unwrap_or(0.0) * 100.0).round() as i64;
    let steps: Vec<String> = view["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let total = s["total"].as_i64().unwrap_or(1);
                    let count = if total > 1 { format!(" ×{total}") } else { String::new() };
                    format!(
                        "{}{count} {} {}%",
                        s["name"].as_str().unwrap_or("?"),
                        s["status"].as_str().unwrap_or("?"),
                        pct(s)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{} {}% | {}", view["status"].as_str().unwrap_or("?"), pct(view), steps.join(" | "))
}

/// Polls the workflow (at its `poll_after_ms` pace) and prints a line whenever it changes.
async fn follow(api: &ApiClient, id: &str) -> Result<u8, ClientError> {
    let mut last = String::new();
    loop {
        let view = api.call(Method::GET, &["workflows", id], None).await?;
        let now = line(&view);
        if now != last {
            eprintln!("{now}");
            last = now;
        }
        match view["status"].as_str() {
            Some("succeeded") => {
                print_json(&view);
                return Ok(EXIT_SUCCEEDED);
            }
            Some("failed" | "cancelled") => {
                print_json(&view);
                return Ok(EXIT_JOB_FAILED);
            }
            _ => {}
        }
        let pause = view["poll_after_ms"].as_u64().unwrap_or(500).clamp(100, 5_000);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(super::EXIT_INTERRUPTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_the_workflow_then_each_step() {
        let view = serde_json::json!({"status": "running", "progress": 0.5, "steps": [
            {"name": "transcribe", "status": "succeeded", "progress": 1.0, "total": 1},
            {"name": "translate", "status": "running", "progress": 0.25, "total": 4},
        ]});
        assert_eq!(line(&view), "running 50% | transcribe succeeded 100% | translate ×4 running 25%");
    }
}

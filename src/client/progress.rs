//! How a wait shows the job: a live `indicatif` bar (status, percent, progress message) when
//! stdout and stderr are both terminals; otherwise one plain line on stderr per change, so logs
//! and pipes get a readable history and stdout keeps only the final JSON.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::job::JobStatus;

/// Bar length: per-mille, so small progress steps still move it.
const BAR_LEN: u64 = 1000;

/// The display of one wait.
pub enum Progress {
    /// A live bar on the terminal.
    Bar {
        /// The bar.
        bar: ProgressBar,
        /// The last status drawn, to restore it after a retry note.
        last: Option<JobStatus>,
    },
    /// One line on stderr per change.
    Lines {
        /// The last line printed, to print only changes.
        last: Option<String>,
    },
}

impl Progress {
    /// A bar when stdout and stderr are terminals, else lines.
    pub fn new() -> Self {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Self::bar(ProgressDrawTarget::stderr())
        } else {
            Self::lines()
        }
    }

    /// The line-per-change display.
    pub fn lines() -> Self {
        Self::Lines { last: None }
    }

    fn bar(target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(BAR_LEN), target);
        let style = ProgressStyle::with_template("{spinner} {prefix:<9} [{bar:30}] {percent:>3}%  {wide_msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix("waiting");
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bar { bar, last: None }
    }

    /// Shows `status`; in line mode prints a line only when what it shows has changed.
    pub fn update(&mut self, status: &JobStatus) {
        match self {
            Self::Bar { bar, last } => {
                bar.set_prefix(status.status.as_str());
                bar.set_position((f64::from(status.progress.clamp(0.0, 1.0)) * BAR_LEN as f64) as u64);
                bar.set_message(detail(status));
                *last = Some(status.clone());
            }
            Self::Lines { last } => {
                let line = line(status);
                if last.as_deref() != Some(line.as_str()) {
                    eprintln!("{line}");
                    *last = Some(line);
                }
            }
        }
    }

    /// Shows a passing condition, like the API being unreachable.
    pub fn note(&mut self, text: &str) {
        match self {
            Self::Bar { bar, .. } => bar.set_message(text.to_owned()),
            Self::Lines { .. } => eprintln!("{text}"),
        }
    }

    /// Puts the last status back after a [`note`](Self::note).
    pub fn restore(&mut self) {
        if let Self::Bar { bar, last: Some(status) } = self {
            bar.set_message(detail(status));
        }
    }

    /// Leaves the bar's last state on screen and stops drawing it.
    pub fn finish(&self) {
        if let Self::Bar { bar, .. } = self {
            bar.abandon();
        }
    }
}

/// The progress message and, past the first attempt, which attempt this is.
fn detail(status: &JobStatus) -> String {
    let mut text = status.message.clone().unwrap_or_default();
    if status.attempt > 1 {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&format!("(attempt {} of {})", status.attempt, status.max_attempts));
    }
    text
}

/// Whole percent done, rounded down so 99.9 % never reads 100 % before the job is finished.
fn percent(status: &JobStatus) -> u32 {
    (f64::from(status.progress.clamp(0.0, 1.0)) * 100.0 + 1e-6).floor() as u32
}

/// One line of the line-per-change display: `running    40%  step 2 of 5`.
pub fn line(status: &JobStatus) -> String {
    let detail = detail(status);
    let head = format!("{:<9} {:>3}%", status.status.as_str(), percent(status));
    if detail.is_empty() { head } else { format!("{head}  {detail}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Status;
    use chrono::Utc;
    use uuid::Uuid;

    fn status(status: Status, progress: f32, message: Option<&str>, attempt: i32) -> JobStatus {
        let now = Utc::now();
        JobStatus {
            id: Uuid::now_v7(),
            status,
            progress,
            message: message.map(str::to_owned),
            attempt,
            max_attempts: 3,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            poll_after_ms: Some(500),
            workflow: None,
        }
    }

    #[test]
    fn lines_show_status_percent_message_and_retries() {
        assert_eq!(line(&status(Status::Queued, 0.0, None, 0)), "queued      0%");
        assert_eq!(line(&status(Status::Running, 0.4, Some("step 2 of 5"), 1)), "running    40%  step 2 of 5");
        assert_eq!(line(&status(Status::Running, 0.999, None, 2)), "running    99%  (attempt 2 of 3)");
        assert_eq!(line(&status(Status::Succeeded, 1.0, Some("done"), 3)), "succeeded 100%  done (attempt 3 of 3)");
    }

    #[test]
    fn bar_follows_the_status() {
        let mut p = Progress::bar(ProgressDrawTarget::hidden());
        p.update(&status(Status::Running, 0.25, Some("a quarter"), 1));
        p.note("API unreachable; retrying");
        let Progress::Bar { bar, .. } = &p else { panic!("a bar") };
        assert_eq!((bar.position(), bar.message()), (250, "API unreachable; retrying".to_owned()));
        p.restore();
        let Progress::Bar { bar, .. } = &p else { panic!("a bar") };
        assert_eq!((bar.prefix(), bar.message()), ("running".to_owned(), "a quarter".to_owned()));
        p.finish();
    }
}

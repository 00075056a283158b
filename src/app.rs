//! The [`App`]: functions and schedules registered in code, and the `runq` command line.

/// A runq application (placeholder until the foundation lands).
#[derive(Default)]
pub struct App {}

impl App {
    /// An application with the built-in functions.
    pub fn new() -> Self {
        Self {}
    }

    /// Parses the command line and runs the chosen role.
    pub fn run(self) -> std::process::ExitCode {
        std::process::ExitCode::SUCCESS
    }
}

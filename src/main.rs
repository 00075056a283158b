//! The shipped `runq` binary: the library's [`runq::App`] with the built-in functions.

fn main() -> std::process::ExitCode {
    runq::App::new().run()
}

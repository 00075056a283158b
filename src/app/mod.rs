//! The [`App`]: the functions registered in code, and the `runq` command line that runs one
//! role of the system (`api`, `migrate`, `token`, `emulator`, ...) with them.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod declarations;
mod roles;

use crate::auth::mint_hs256;
use crate::config::{ApiConfig, AuthArgs, DevConfig, MigrateConfig, WorkerConfig};
use crate::function::{Function, Registry};
use crate::job::Priority;
use crate::schedule::{Action, Schedule, Schedules};
use crate::store;

/// A runq application: the functions it can run. The shipped `runq` binary is
/// `App::new().run()`; users add their own functions and build their own binary.
pub struct App {
    registry: Registry,
    schedules: Schedules,
    /// The queues: the three priorities' and the ones declared with [`App::queue`].
    queues: Vec<crate::infra::QueueSpec>,
    /// Declaration errors, reported when the app runs (so a bad schedule stops start-up with a
    /// message naming it, whatever order functions and schedules were declared in).
    errors: Vec<String>,
    /// HTTP functions declared with a plain `http://` URL: refused outside `runq dev`.
    plain_http: Vec<String>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An application with the built-in functions (`noop`, `sleep`, `echo`, `fail`).
    pub fn new() -> Self {
        Self {
            registry: Registry::builtin(),
            schedules: Schedules::builtin(),
            queues: crate::infra::QueueSpec::defaults(),
            errors: Vec::new(),
            plain_http: Vec::new(),
        }
    }

    /// An application with no functions at all.
    pub fn empty() -> Self {
        Self {
            registry: Registry::default(),
            schedules: Schedules::builtin(),
            queues: crate::infra::QueueSpec::defaults(),
            errors: Vec::new(),
            plain_http: Vec::new(),
        }
    }

    /// Registers a function.
    ///
    /// # Panics
    /// On a duplicate or invalid name or policy: a programming error found at start-up.
    pub fn function<F: Function>(mut self, function: F) -> Self {
        if let Err(e) = self.registry.register(function) {
            panic!("runq: {e}");
        }
        self
    }

    /// Registers an HTTP function: a URL that runs the jobs (any language; `docs/http-functions.md`
    /// is the protocol), with the same policy as any function:
    /// `App::new().http_function(HttpFunction::new("transcribe", "https://stt-xyz.a.run.app/run"))`.
    /// A plain `http://` URL is for `runq dev` only: other commands refuse to start with it.
    ///
    /// # Panics
    /// On a duplicate or invalid name, policy or URL, as [`App::function`].
    pub fn http_function(mut self, function: crate::function::http::HttpFunction) -> Self {
        if function.url().starts_with("http://") {
            self.plain_http.push(function.name().to_owned());
        }
        if let Err(e) = self.registry.register_http(function, true) {
            panic!("runq: {e}");
        }
        self
    }

    /// Declares a periodic job: `function` with `args` at every `cron` slot (5 fields, as Cloud
    /// Scheduler takes them) in `time_zone` (IANA). Fired by Cloud Scheduler in production and by
    /// `runq dev`'s ticker locally; each scheduled time runs once however often it is fired.
    pub fn schedule(
        mut self,
        name: &str,
        cron: &str,
        time_zone: &str,
        function: &str,
        args: serde_json::Value,
        priority: Priority,
    ) -> Self {
        let action = Action::Submit { function: function.into(), args, priority };
        if let Err(e) = Schedule::new(name, cron, time_zone, action).and_then(|s| self.schedules.add(s)) {
            self.errors.push(e.to_string());
        }
        self
    }

    /// Declares a limit over functions registered before it: at most N runs at once, at most R
    /// starts a second, globally or per owner or args field, held across every worker:
    /// `App::new().function(Index).limit(Limit::new("youtube").rate(2.0, 2).on(["index"]))`.
    /// Its values can be changed at run time (`PUT /limits/{name}`) without a deploy.
    pub fn limit(mut self, limit: crate::limits::Limit) -> Self {
        if let Err(e) = self.registry.limit(limit) {
            self.errors.push(e);
        }
        self
    }

    /// Declares functions, limits and workflow templates through the registry itself, for code
    /// that registers a set of them (a module's `register(&mut Registry)`).
    ///
    /// # Panics
    /// As [`App::function`] does, when `declare` panics on a registration error.
    pub fn with_registry(mut self, declare: impl FnOnce(&mut Registry)) -> Self {
        declare(&mut self.registry);
        self
    }

    /// Declares a workflow template over functions registered before it, submitted by name
    /// (`POST /workflows {"workflow": NAME, "args": ...}`, `runq workflow submit NAME`):
    /// `App::new().workflow(Workflow::new("speech").step(Step::run("transcribe", "transcribe")))`.
    pub fn workflow(mut self, workflow: crate::workflow::Workflow) -> Self {
        let checked = crate::submit::check_workflow(&self.registry, &workflow);
        if let Err(e) = checked.and_then(|()| self.registry.workflow(workflow)) {
            self.errors.push(e);
        }
        self
    }

    /// Declares a periodic workflow: the template `workflow` (declared before it, with
    /// [`App::workflow`]) with `args` at every `cron` slot in `time_zone`, each scheduled time
    /// once, as [`App::schedule`] does for a job.
    pub fn schedule_workflow(
        mut self,
        name: &str,
        cron: &str,
        time_zone: &str,
        workflow: &str,
        args: serde_json::Value,
    ) -> Self {
        let action = Action::Workflow { workflow: workflow.into(), args };
        if let Err(e) = Schedule::new(name, cron, time_zone, action).and_then(|s| self.schedules.add(s)) {
            self.errors.push(e.to_string());
        }
        self
    }

    /// [`App::schedule`] with unique jobs ([`Schedule::unique`]): a firing while the last
    /// firing's job is still queued, retrying or running submits nothing, so a job slower than
    /// its schedule (or a backlog) never piles up.
    pub fn schedule_unique(
        mut self,
        name: &str,
        cron: &str,
        time_zone: &str,
        function: &str,
        args: serde_json::Value,
        priority: Priority,
    ) -> Self {
        let action = Action::Submit { function: function.into(), args, priority };
        if let Err(e) = Schedule::new(name, cron, time_zone, action).and_then(|s| self.schedules.add(s.unique())) {
            self.errors.push(e.to_string());
        }
        self
    }

    /// Declares a queue of its own (a topic, push subscription and worker service), for the
    /// functions whose [`Function::queue`] names it: `App::new().queue(QueueSpec::custom("heavy"))`.
    pub fn queue(mut self, spec: crate::infra::QueueSpec) -> Self {
        if !crate::job::valid_queue_name(&spec.name) {
            self.errors
                .push(format!("queue {:?}: use 1-30 characters of a-z, 0-9, '-', starting with a letter", spec.name));
        } else if self.queues.iter().any(|q| q.name == spec.name) {
            self.errors.push(format!("queue `{}` is declared twice", spec.name));
        } else {
            self.queues.push(spec);
        }
        self
    }

    /// The declared queues.
    pub fn queues(&self) -> &[crate::infra::QueueSpec] {
        &self.queues
    }

    /// The registered functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The declared schedules (built-ins included).
    pub fn schedules(&self) -> &Schedules {
        &self.schedules
    }

    /// Every declaration error: invalid schedules, or schedules of unknown functions or bad args.
    pub fn check(&self) -> Result<(), String> {
        let mut errors = self.errors.clone();
        if let Err(e) = self.schedules.check(&self.registry) {
            errors.push(e.to_string());
        }
        for queue in self.registry.custom_queues() {
            if !self.queues.iter().any(|q| q.name == queue) {
                errors.push(format!(
                    "queue `{queue}` is used by a function but not declared: add App::queue(QueueSpec::custom(\"{queue}\"))"
                ));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) }
    }

    /// Parses the command line and runs the chosen role until it finishes or is signalled.
    pub fn run(self) -> ExitCode {
        let command = crate::config::ignore_empty_variables(Cli::command());
        let cli = match command.clone().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
            Ok(cli) => cli,
            Err(e) if e.use_stderr() => {
                eprint!("{}", crate::config::name_the_variable(e, &command));
                return ExitCode::from(2);
            }
            Err(e) => {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
        };
        let mut app = self;
        if let Some(path) = cli.command.declarations() {
            let dev = match &cli.command {
                Command::Dev(_) => true,
                Command::Exec(c) => c.exec.allow_http,
                _ => false,
            };
            match app.declare_file(path, dev) {
                Ok(declared) => app = declared,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Err(e) = app.check() {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        if !matches!(&cli.command, Command::Dev(_))
            && !matches!(&cli.command, Command::Exec(c) if c.exec.allow_http)
            && let Some(name) = app.plain_http.first()
        {
            eprintln!(
                "error: HTTP function `{name}`: its URL is plain http://, allowed in `runq dev` only; use https://"
            );
            return ExitCode::FAILURE;
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: can't start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(app.run_command(cli.command));
        if let Err(e) = &result {
            tracing::error!(error = %e, "exiting");
        }
        // The spans still buffered go out while the runtime (the exporter's channel) still runs.
        crate::telemetry::otel::shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run_command(self, command: Command) -> Result<(), Box<dyn std::error::Error>> {
        match command {
            Command::Api(config) => {
                config.log.install("api")?;
                roles::api(*config, self.registry, self.schedules).await.map_err(|e| e as _)
            }
            Command::Migrate(config) => {
                config.log.install("migrate")?;
                let url = config.database.url()?;
                let pool = store::connect_lazy(url, 1, Duration::from_secs(10))?;
                store::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Worker(config) => {
                config.log.install(&format!("worker-{}", config.worker.queue))?;
                roles::worker(*config, self.registry, self.schedules).await.map_err(|e| e as _)
            }
            Command::Dev(config) => {
                config.log.install_local()?;
                crate::dev::run(*config, self.registry, self.schedules).await.map_err(|e| e as _)
            }
            Command::Exec(config) => {
                config.log.install("exec")?;
                roles::exec(*config, self.registry, self.schedules).await.map_err(|e| e as _)
            }
            Command::Emulator(command) => {
                command.log.install("emulator")?;
                Ok(crate::emulator::run(command.emulator, crate::server::shutdown_signal()).await?)
            }
            Command::Token(args) => {
                let auth = args.auth.settings()?;
                let secret = auth.hs256_secret.as_deref().ok_or_else(|| crate::config::ConfigError {
                    var: "RUNQ_AUTH_HS256_SECRET",
                    reason: "is not set; `runq token` signs with it".into(),
                })?;
                let token = mint_hs256(
                    secret,
                    &args.sub,
                    args.admin,
                    args.ttl,
                    &auth.admin_claim,
                    &auth.admin_value,
                    auth.issuer.as_deref(),
                    auth.audience.as_deref(),
                )?;
                println!("{token}");
                Ok(())
            }
            Command::Client(cmd) => std::process::exit(crate::client::run(cmd).await),
            Command::Schedules(args) => {
                let listing = crate::schedule::listing(&self.schedules, chrono::Utc::now(), args.next);
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&listing)?);
                } else {
                    for l in listing {
                        let next: Vec<String> = l.next.iter().map(|t| t.to_rfc3339()).collect();
                        println!(
                            "{:<20} {:<16} {:<18} {:<38} next: {}",
                            l.name,
                            l.cron,
                            l.time_zone,
                            l.action,
                            next.join(", ")
                        );
                    }
                }
                Ok(())
            }
            Command::Infra(InfraCommand::Export(args)) => {
                let export = crate::infra::export(&self.schedules, &self.queues);
                let json = serde_json::to_string_pretty(&export)? + "\n";
                match args.output {
                    Some(path) => std::fs::write(&path, json)?,
                    None => print!("{json}"),
                }
                Ok(())
            }
        }
    }
}

/// runq: background jobs for Google Cloud Run.
#[derive(Parser, Debug)]
#[command(name = "runq", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the public JSON API (Cloud Run service `runq-api`).
    Api(Box<ApiConfig>),
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate(MigrateConfig),
    /// Print a local HS256 token signed with RUNQ_AUTH_HS256_SECRET.
    Token(TokenArgs),
    /// Serve a queue's push endpoint (Cloud Run service `runq-worker-{queue}`).
    Worker(Box<WorkerConfig>),
    /// Run everything in one process: API, a worker per priority, the Pub/Sub emulator, the sweep.
    Dev(Box<DevConfig>),
    /// Run the Pub/Sub emulator alone.
    Emulator(EmulatorCommand),
    /// Run one claimed job of a Cloud Run Job function (started by the worker that claimed it).
    Exec(Box<crate::config::ExecConfig>),
    /// List the declared schedules with their next fire times.
    Schedules(SchedulesArgs),
    /// Infrastructure as code generated from the declarations.
    #[command(subcommand)]
    Infra(InfraCommand),
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

impl Command {
    /// The `runq.toml` this command reads (`RUNQ_CONFIG`), if any.
    fn declarations(&self) -> Option<&std::path::Path> {
        let args = match self {
            Command::Api(c) => &c.declarations,
            Command::Worker(c) => &c.declarations,
            Command::Dev(c) => &c.declarations,
            Command::Exec(c) => &c.declarations,
            Command::Schedules(a) => &a.declarations,
            Command::Infra(InfraCommand::Export(a)) => &a.declarations,
            _ => return None,
        };
        args.config.as_deref()
    }
}

#[derive(clap::Args, Debug)]
struct EmulatorCommand {
    #[command(flatten)]
    emulator: crate::emulator::EmulatorArgs,
    #[command(flatten)]
    log: crate::config::LogArgs,
}

#[derive(clap::Args, Debug)]
struct SchedulesArgs {
    /// How many upcoming fire times to show per schedule.
    #[arg(long, default_value_t = 3)]
    next: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    declarations: crate::config::DeclarationsArgs,
}

#[derive(Subcommand, Debug)]
enum InfraCommand {
    /// Write the queues and schedules as the JSON that `infra/` reads (infra/runq.json).
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
    #[command(flatten)]
    declarations: crate::config::DeclarationsArgs,
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The token's subject: the owner of the jobs it submits.
    #[arg(long)]
    sub: String,
    /// Grant admin (sees every owner's jobs).
    #[arg(long)]
    admin: bool,
    /// Lifetime, like 30s, 15m, 1h or 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{raw:?} is not a duration like 30s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{raw:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    /// The README's configuration table: each variable with the commands that read it.
    fn readme_table() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme.split("\n## Configuration\n").nth(1).expect("README has a Configuration section");
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let var = cells[1].trim_matches('`').to_owned();
                let readers = cells[2].split(',').map(|r| r.trim().to_owned()).collect();
                (var, readers)
            })
            .collect()
    }

    #[test]
    fn readme_lists_every_variable() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut tree: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            let reader = if [
                "submit", "status", "cancel", "retry", "wait", "jobs", "bulk", "limits", "pause", "resume", "workflow",
            ]
            .contains(&name)
            {
                "CLI"
            } else {
                name
            };
            for var in crate::config::variables(sub) {
                tree.entry(var).or_default().insert(reader.to_owned());
            }
        }
        let readme = readme_table();
        let missing: Vec<_> = tree.keys().filter(|v| !readme.contains_key(*v)).collect();
        let stale: Vec<_> = readme.keys().filter(|v| !tree.contains_key(*v)).collect();
        assert!(missing.is_empty(), "variables the code reads but the README's table doesn't list: {missing:?}");
        assert!(stale.is_empty(), "variables the README lists but no command reads: {stale:?}");
        for (var, readers) in &tree {
            assert_eq!(&readme[var], readers, "the README's `read by` of {var}");
        }
    }

    #[test]
    fn every_variable_is_shown_in_help_with_its_default() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        for role in ["api", "worker", "dev", "migrate"] {
            let sub = cli.find_subcommand_mut(role).unwrap();
            let help = sub.render_long_help().to_string();
            for arg in sub.get_arguments().filter(|a| a.get_env().is_some()) {
                let var = arg.get_env().unwrap().to_string_lossy();
                assert!(help.contains(&format!("[env: {var}")), "`runq {role} --help` shows {var}");
                let doc = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !arg.get_default_values().is_empty() || doc.contains("Default") || doc.contains("Required"),
                    "{var} states its default (a clap default, or `Default:` in its doc): {doc:?}"
                );
            }
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

//! `spade`: run Digdag workflows whose operators are sandboxed WebAssembly components.
//!
//! This binary only parses arguments and wires the layers together; the work happens in
//! spade-dig (loading), spade-engine (running), spade-store (state), spade-runtime
//! (plugins), spade-registry (installing plugins) and spade-server (REST API and web UI).
//! `echo>` output goes to stdout; everything else spade says goes to stderr.

mod agent;
mod attempts;
mod bench;
mod bench_server;
mod check;
mod client;
mod config;
mod console;
mod host;
mod inspect;
mod launcher;
mod plugin;
mod run;
mod scheduler;
mod secrets;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The engine's hot path allocates and frees many small JSON values per task; glibc's
// malloc spent ~13% of a 10k-task run consolidating its free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "spade", version, about = "Run Digdag workflows with sandboxed WebAssembly operators")]
struct Cli {
    /// Log level of spade's own messages on stderr (error, warn, info, debug, trace).
    #[arg(short = 'l', long = "log-level", global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow of the project in the current directory (like `digdag run`).
    #[command(visible_alias = "r")]
    Run(run::RunArgs),
    /// Validate every workflow of the project and print its task tree (like `digdag check`).
    #[command(visible_alias = "c")]
    Check(check::CheckArgs),
    /// Start a new attempt of a finished attempt's session: --resume or --all (like `digdag retry`).
    Retry(attempts::RetryArgs),
    /// Stop a running attempt, interrupting its running operator (like `digdag kill`).
    Kill(attempts::KillArgs),
    /// Operator plugins: scaffold (new), build, list the installed ones, inspect a component file.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Measure the runtime and engine against the targets; prints the figures.
    Bench(bench::BenchArgs),
    /// Start a session of every scheduled workflow at each of its slots, catching up missed
    /// ones (like `digdag scheduler`); --once starts what is due and exits.
    #[command(visible_alias = "sched")]
    Scheduler(scheduler::SchedulerArgs),
    /// Stop starting sessions of a scheduled workflow (like `digdag disable`).
    Disable(scheduler::ToggleArgs),
    /// Start sessions of a disabled schedule again, catching up missed slots (like `digdag enable`).
    Enable(scheduler::ToggleArgs),
    /// Skip slots of a schedule: --skip N or --skip-to TIME (like `digdag reschedule`).
    Reschedule(scheduler::RescheduleArgs),
    /// Run the past slots of a schedule from a time, each as a named attempt (like `digdag backfill`).
    Backfill(scheduler::BackfillArgs),
    /// List the scheduled workflows with their next run and session times (like `digdag schedules`).
    Schedules(scheduler::SchedulesArgs),
    /// List, set or delete the secrets of local runs (like `digdag secrets --local`).
    Secrets(secrets::SecretsArgs),
    /// List the sessions kept in the state database, newest first (like `digdag sessions`).
    Sessions(inspect::SessionsArgs),
    /// List attempts, of one session or of all, newest first (like `digdag attempts`).
    Attempts(inspect::AttemptsArgs),
    /// Show the tasks of an attempt and their states (like `digdag tasks`).
    Tasks(inspect::TasksArgs),
    /// Show the task logs of an attempt (plugin logs, captured output, failures) (like `digdag log`).
    Log(inspect::LogArgs),
    /// Serve the REST API over a state database of pushed projects (like `digdag server`).
    Server(server::ServerArgs),
    /// Upload the project as a new revision to a server (like `digdag push`).
    Push(client::PushArgs),
    /// Fetch a project's revision from a server and extract it (like `digdag download`).
    Download(client::DownloadArgs),
    /// List a server's projects, or one project's revisions (like `digdag projects`).
    Projects(client::ProjectsArgs),
    /// Start an attempt of a pushed project's workflow on a server (like `digdag start`).
    Start(client::StartArgs),
    /// Run operator calls for a server, talking to it over HTTP only (a remote agent).
    Agent(agent::AgentArgs),
}

/// The state database: `--state` (a file or a `postgres://` URL), else the project's
/// `.spade/state.db`.
pub fn state_location(root: &std::path::Path, state: &Option<String>) -> spade_store::StoreLocation {
    match state {
        Some(text) => spade_store::StoreLocation::parse(text),
        None => spade_store::StoreLocation::Sqlite(root.join(".spade/state.db")),
    }
}

/// The project directory: `--project` or the current directory.
pub fn project_dir(project: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match project {
        Some(p) => p.clone(),
        None => std::env::current_dir()?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("spade={0},spade_engine={0},spade_runtime={0}", cli.log_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).with_target(false).init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        Command::Retry(args) => attempts::retry(args),
        Command::Kill(args) => attempts::kill(args),
        Command::Plugin(cmd) => plugin::plugin(cmd),
        Command::Bench(args) => bench::bench(args),
        Command::Scheduler(args) => scheduler::scheduler(args),
        Command::Schedules(args) => scheduler::schedules(args),
        Command::Backfill(args) => scheduler::backfill(args),
        Command::Disable(args) => scheduler::toggle(args, false),
        Command::Enable(args) => scheduler::toggle(args, true),
        Command::Reschedule(args) => scheduler::reschedule(args),
        Command::Secrets(args) => secrets::secrets(args),
        Command::Sessions(args) => inspect::sessions(args),
        Command::Attempts(args) => inspect::attempts(args),
        Command::Tasks(args) => inspect::tasks(args),
        Command::Log(args) => inspect::log(args),
        Command::Server(args) => server::server(args),
        Command::Push(args) => client::push(args),
        Command::Download(args) => client::download(args),
        Command::Projects(args) => client::projects(args),
        Command::Start(args) => client::start(args),
        Command::Agent(args) => agent::agent(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

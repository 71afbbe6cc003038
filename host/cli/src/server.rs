//! `spade server`: the REST API and web UI over a state database that holds pushed
//! projects (`spade push`), like `digdag server`.
//!
//! It serves projects, revisions, their workflows and archives, and the sessions, attempts,
//! tasks and logs recorded in the database; it runs attempts of pushed projects
//! (spade-executor) whose operator calls go through the task queue to `spade agent`s.

use std::process::ExitCode;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// State database: a file, or a PostgreSQL URL (postgres://user@host/db) that several
    /// servers share.
    #[arg(long, value_name = "FILE|URL", env = "SPADE_STATE", hide_env_values = true)]
    pub state: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 65432)]
    pub port: u16,
    /// Largest project archive a push may upload, in MiB (compressed).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub max_archive_size: u64,
    /// Largest a project archive may be once unpacked, in MiB.
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    pub max_unpacked_size: u64,
    /// Where revisions are unpacked for the executor [default: beside a SQLite state file,
    /// else a temporary directory].
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Seconds an agent keeps a call without a heartbeat; then the call runs elsewhere.
    #[arg(long, default_value_t = 20)]
    pub lease_seconds: u64,
    /// Times a call may lose its agent before it fails instead of running again.
    #[arg(long, default_value_t = 3)]
    pub max_task_restarts: i64,
    /// Operator calls of one attempt waiting on agents at once.
    #[arg(long, default_value_t = 64)]
    pub max_calls_per_attempt: usize,
    /// Start no scheduled sessions (another server sharing the database does).
    #[arg(long)]
    pub disable_scheduler: bool,
    /// Open connections to the state database, at most.
    #[arg(long, default_value_t = 8)]
    pub max_connections: u32,
    /// Listen on an address other hosts can reach although the API has no authentication
    /// yet (anyone who reaches it can push and read every project).
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

pub fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let loopback = matches!(args.bind.as_str(), "localhost" | "::1")
        || args.bind.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !args.allow_unauthenticated {
        bail!(
            "--bind {}: the API has no authentication yet, so it listens on loopback only; put an \
             authenticating proxy in front and pass --allow-unauthenticated to listen there",
            args.bind
        );
    }
    let location = spade_store::StoreLocation::parse(&args.state);
    // Opened once now, so that a wrong URL or a newer schema stops the server at start.
    drop(location.open().with_context(|| format!("opening the state database {}", args.state))?);
    let defaults = spade_archive::Limits::default();
    let stores = spade_store::StorePool::new(location.clone(), args.max_connections);
    let executor = spade_executor::Executor::new(
        stores.clone(),
        spade_executor::ExecutorConfig {
            data_dir: args.data_dir.clone().unwrap_or_else(|| spade_executor::default_data_dir(&location)),
            engine: spade_engine::EngineOptions {
                workers: args.max_calls_per_attempt.max(1),
                commit_before_calls: true,
                ..Default::default()
            },
            lease: std::time::Duration::from_secs(args.lease_seconds.max(1)),
            max_claims: args.max_task_restarts.max(1),
        },
    );
    executor.spawn_background(!args.disable_scheduler);
    let config = spade_server::ApiConfig {
        executor: Some(executor),
        stores,
        local: None,
        archive_limits: spade_archive::Limits {
            max_archive_bytes: args.max_archive_size << 20,
            max_unpacked_bytes: args.max_unpacked_size << 20,
            max_entries: defaults.max_entries,
        },
    };
    let addr = format!("{}:{}", args.bind, args.port);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (pick another --port)"))?;
        eprintln!("server: REST API and web UI on http://{}/", listener.local_addr()?);
        spade_server::serve(listener, config).await.context("the API stopped")
    })?;
    Ok(ExitCode::SUCCESS)
}

//! Client commands against a server (`-e/--endpoint`), with Digdag's names: `push`,
//! `download` and `projects`. The work is in spade-archive (packing, safe unpacking) and
//! spade-client (the REST calls); this module parses arguments and prints.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use spade_client::{Client, DEFAULT_ENDPOINT, Push};

/// The server to talk to.
#[derive(clap::Args)]
pub struct EndpointArgs {
    /// The server's URL.
    #[arg(short = 'e', long, env = "SPADE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The project's name on the server.
    pub name: String,
    /// Project directory (default: the current directory).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// The revision's name (default: a random UUID, as Digdag). Pushing a name again with
    /// the same files is a no-op; with other files the server refuses it.
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
    /// Archive what a symbolic link pointing outside the project points to, instead of
    /// refusing the link.
    #[arg(long)]
    pub copy_outgoing_symlinks: bool,
    /// Start the schedules of workflows new to the project from this time (ISO 8601)
    /// instead of now, so their past slots run.
    #[arg(long, value_name = "TIME")]
    pub schedule_from: Option<String>,
    /// Start this workflow's schedule over (from --schedule-from, or now); repeatable.
    #[arg(long, value_name = "WORKFLOW")]
    pub clear_schedule: Vec<String>,
    /// Start every workflow's schedule over.
    #[arg(long)]
    pub clear_schedule_all: bool,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// The project's name on the server.
    pub name: String,
    /// The revision (default: the latest).
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
    /// Directory to extract into (default: ./<name>); it must not exist or be empty.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

#[derive(clap::Args)]
pub struct ProjectsArgs {
    /// Only this project, with its revisions.
    pub name: Option<String>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let dir = crate::project_dir(&args.project)?;
    let options = spade_archive::PackOptions { copy_outgoing_symlinks: args.copy_outgoing_symlinks };
    let packed = spade_archive::pack(&dir, &options).with_context(|| format!("packing {}", dir.display()))?;
    let revision = args.revision.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    eprintln!("Creating an archive of {} ({} files, {} bytes)", dir.display(), packed.files.len(), packed.bytes.len());
    let client = Client::new(&args.endpoint.endpoint);
    let project = client.push(&Push {
        project: &args.name,
        revision: &revision,
        archive: &packed.bytes,
        schedule_from: args.schedule_from.as_deref(),
        clear_schedule: &args.clear_schedule,
        clear_schedule_all: args.clear_schedule_all,
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Uploaded:")?;
    writeln!(out, "  id: {}", project.id)?;
    writeln!(out, "  name: {}", project.name)?;
    writeln!(out, "  revision: {}", project.revision)?;
    writeln!(out, "  archive type: {}", project.archive_type.as_deref().unwrap_or("-"))?;
    writeln!(out, "  archive sha256: {}", project.archive_sha256.as_deref().unwrap_or("-"))?;
    writeln!(out, "  project created at: {}", project.created_at)?;
    writeln!(out, "  revision updated at: {}", project.updated_at)?;
    Ok(ExitCode::SUCCESS)
}

pub fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if output.exists() && std::fs::read_dir(&output).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!(
            "{} exists and is not empty: pick another directory (-o) so that nothing is overwritten",
            output.display()
        );
    }
    let client = Client::new(&args.endpoint.endpoint);
    let project = client.project(&args.name)?;
    let bytes = client.archive(&project.id, args.revision.as_deref())?;
    // The server checked the archive when it was pushed; it is unpacked as carefully anyway.
    let limits =
        spade_archive::Limits { max_archive_bytes: u64::MAX, max_unpacked_bytes: 1 << 34, max_entries: 1_000_000 };
    let done = spade_archive::unpack_to(&bytes, &output, &limits)
        .with_context(|| format!("extracting the archive into {}", output.display()))?;
    let revision = args.revision.as_deref().unwrap_or(&project.revision);
    eprintln!(
        "Extracted project '{}' revision '{revision}' to {} ({} entries).",
        project.name,
        output.display(),
        done.entries
    );
    Ok(ExitCode::SUCCESS)
}

pub fn projects(args: ProjectsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.endpoint.endpoint);
    let mut out = std::io::stdout().lock();
    match &args.name {
        None => {
            let projects = client.projects()?;
            let width = projects.iter().map(|p| p.name.len()).max().unwrap_or(0).max(4);
            writeln!(out, "{:<width$}  {:>4}  {:<36}  UPDATED", "NAME", "ID", "REVISION")?;
            for p in &projects {
                writeln!(out, "{:<width$}  {:>4}  {:<36}  {}", p.name, p.id, p.revision, p.updated_at)?;
            }
            if projects.is_empty() {
                eprintln!("no projects yet: `spade push <name>` uploads one");
            }
        }
        Some(name) => {
            let project = client.project(name)?;
            writeln!(out, "{} (id {})", project.name, project.id)?;
            for r in client.revisions(&project.id)?.revisions {
                let size = r.archive_size.map(|n| format!("{n} bytes")).unwrap_or_default();
                writeln!(out, "  {}  {}  {}", r.revision, r.created_at, size)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// The project's name on the server.
    pub project: String,
    /// The workflow to start.
    pub workflow: String,
    /// The session time: yyyy-MM-dd, "yyyy-MM-dd HH:mm:ss" in the workflow's zone, ISO 8601,
    /// `daily` or `hourly`.
    #[arg(long)]
    pub session: String,
    /// A param (KEY=VALUE), repeatable.
    #[arg(short = 'p', long = "param")]
    pub params: Vec<String>,
    /// Name of the attempt, when the session has one already (Digdag's --retry).
    #[arg(long)]
    pub retry: Option<String>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.endpoint.endpoint);
    let project = client.project(&args.project)?;
    let params = crate::run::parse_params(&args.params)?;
    let attempt = client.start(&spade_client::rest::RestAttemptRequest {
        project_id: Some(project.id.clone()),
        workflow_name: Some(args.workflow.clone()),
        workflow_id: None,
        session_time: Some(args.session),
        params,
        retry_attempt_name: args.retry,
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Started a session attempt:")?;
    writeln!(out, "  session id: {}", attempt.session_id)?;
    writeln!(out, "  attempt id: {}", attempt.id)?;
    writeln!(out, "  uuid: {}", attempt.session_uuid)?;
    writeln!(out, "  project: {}", project.name)?;
    writeln!(out, "  workflow: {}", args.workflow)?;
    writeln!(out, "  session time: {}", attempt.session_time)?;
    writeln!(out, "  revision: {}", project.revision)?;
    Ok(ExitCode::SUCCESS)
}

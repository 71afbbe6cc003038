//! `spade agent`: runs operator calls for a server (spade-agent), speaking only HTTP to it.
//! This module parses arguments and builds each revision's operator host from its
//! `spade.yml`, as `spade run` does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::client::EndpointArgs;

#[derive(clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// This agent's tags: a task whose params set `agent_tag: T` runs only on agents tagged T.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Operator calls run at once.
    #[arg(long, visible_alias = "max-task-threads", default_value_t = 4)]
    pub slots: usize,
    /// How the agent names itself to the server [default: <host name>-<process id>].
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of cached revisions and of the calls' workspaces [default: a temporary one].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Operator hosts as `spade run` builds them: bundled plugins plus the revision's own,
/// with the grants of its `spade.yml`.
struct ProjectHosts;

impl spade_agent::HostFactory for ProjectHosts {
    fn host_for(&self, project_dir: &Path) -> Result<Arc<dyn spade_api::OperatorHost>, String> {
        let config = crate::config::ProjectConfig::load(project_dir).map_err(|e| format!("{e:#}"))?;
        crate::host::host_with(&config, &[]).map_err(|e| format!("{e:#}"))
    }
}

pub fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = args.tags.iter().find(|t| !spade_store::queue::valid_tag(t)) {
        bail!("--tags: {t:?} is not a tag (letters, digits, '-' and '.')");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let name = args
        .name
        .unwrap_or_else(|| format!("{}-{}", if host.is_empty() { "agent" } else { &host }, std::process::id()));
    let (_scratch, work_dir) = match args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("--work-dir {}", dir.display()))?;
            (None, dir)
        }
        None => {
            let t = tempfile::Builder::new().prefix("spade-agent-").tempdir()?;
            let path = t.path().to_path_buf();
            (Some(t), path)
        }
    };
    let workspaces = work_dir.join("workspaces");
    std::fs::create_dir_all(&workspaces)?;
    let config = spade_agent::AgentConfig {
        name: name.clone(),
        tags: args.tags,
        slots: args.slots.max(1),
        cache_dir: work_dir.clone(),
        work_dir: workspaces,
        idle_wait: std::time::Duration::from_millis(200),
    };
    eprintln!("agent {name}: running up to {} calls for {}", config.slots, args.endpoint.endpoint);
    let agent = spade_agent::Agent::new(&args.endpoint.endpoint, config, Arc::new(ProjectHosts));
    agent.run(&AtomicBool::new(false));
    Ok(ExitCode::SUCCESS)
}

//! The workflow engine: runs one attempt of a workflow to its end.
//!
//! It owns Digdag's execution semantics — the task tree with its dependencies
//! ([`tree`]), the parameter walk that decides what each task sees ([`params`]), and the
//! state machine with retries, `_error` and `_check` ([`attempt`]). It reaches operators
//! only through [`spade_api::OperatorHost`] and persistence only through
//! [`spade_store::Store`]; it never touches wasm or SQL itself.

pub mod attempt;
pub mod params;
pub mod services;
pub mod tree;
pub mod workspace;

pub use attempt::{AttemptInput, AttemptSummary, Console, DEFAULT_DISK_QUOTA, EngineOptions, Launcher, run_attempt};

/// The workflows of a loaded project as a revision stores them (name, time zone, config).
pub fn workflow_definitions(project: &spade_dig::Project) -> Vec<spade_store::WorkflowDefinition> {
    project
        .workflows
        .iter()
        .map(|w| spade_store::WorkflowDefinition {
            name: w.name.clone(),
            timezone: w.timezone.name().to_string(),
            config: w.config.clone(),
        })
        .collect()
}

/// Errors that stop an attempt from running at all (task failures are not errors here:
/// they end the attempt with a failed summary).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Store(#[from] spade_store::StoreError),
    #[error("workflow {workflow}: {message}")]
    Compile { workflow: String, message: String },
    #[error("expression engine: {0}")]
    Expr(String),
}

//! spade-dig: loading, validating and compiling Digdag `.dig` projects.
//!
//! It owns everything between the files on disk and a task tree the engine can run: YAML
//! with Digdag's reading rules and `!include` ([`yaml`]), project and workflow-file rules
//! ([`project`]), the compiler with its dependency rules ([`compile`]), schedules
//! ([`schedule`]), session-time parsing ([`session`]), time zones ([`zone`]) and the pure params helpers
//! ([`params`]). It never evaluates `${...}`, never touches wasm or storage, and its only IO
//! is reading project files.

pub mod compile;
pub mod error;
pub mod params;
pub mod project;
pub mod schedule;
pub mod session;
pub mod sla;
pub mod yaml;
pub mod zone;

#[cfg(test)]
mod test_util;

pub use compile::{
    CompileError, CompileErrors, GROUPING_TASK_CONFIG_KEYS, IntervalType, ParallelMode, RetryPolicy, TaskNode,
    check_task_name, compile, compile_under, is_deferred, link_children, parallel_mode, parse_retry,
};
pub use error::{LoadError, LoadErrors, SourcePos};
pub use params::{deep_merge, remove_key_path, set_dotted};
pub use project::{Project, WorkflowDef, load_called_workflow, load_project, load_workflow_file, resolve_call_path};
pub use schedule::{Schedule, ScheduleIssue, ScheduleTime};
pub use session::{SessionTimeError, parse_session_time, resolve_local};
pub use sla::{Sla, SlaDeadline};
pub use spade_api::Object;
pub use yaml::{Loaded, SourceMap, load_yaml_file, parse_yaml_str};
pub use zone::{Zone, ZoneError, ZoneOffset};

//! Capability `workflows` (`spade:operator/workflows`, for `call>`): load a workflow file of
//! the task's project, through the engine (the host never reads the workspace for it).

use super::services_missing;
use crate::host::{HostState, spade};

impl spade::operator::workflows::Host for HostState {
    fn load(&mut self, path: String) -> Result<String, String> {
        let services = self.services.ok_or_else(|| services_missing("workflows.load"))?;
        let config = services.load_workflow(&path)?;
        serde_json::to_string(&config).map_err(|e| format!("cannot encode workflow {path}: {e}"))
    }
}

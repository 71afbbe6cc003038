//! Capability `engine` (`spade:operator/engine`, for `require>`): find or start attempts of
//! other workflows and read their state, through the engine's services.

use spade_api::{AttemptState, StartRequest};

use super::{parse_object, services_missing};
use crate::host::{HostState, wit_engine};

fn attempt_ref(r: spade_api::AttemptRef) -> wit_engine::AttemptRef {
    wit_engine::AttemptRef {
        attempt_id: r.attempt_id,
        session_id: r.session_id,
        state: match r.state {
            AttemptState::Running => wit_engine::AttemptState::Running,
            AttemptState::Success => wit_engine::AttemptState::Success,
            AttemptState::Failure => wit_engine::AttemptState::Failure,
        },
    }
}

impl wit_engine::Host for HostState {
    fn start_or_find(&mut self, req: wit_engine::StartRequest) -> Result<wit_engine::AttemptRef, String> {
        let services = self.services.ok_or_else(|| services_missing("engine.start-or-find"))?;
        let params = parse_object("start-request.params", &req.params)?;
        let req = StartRequest {
            project_name: req.project_name,
            workflow_name: req.workflow_name,
            session_time: req.session_time,
            attempt_name: req.attempt_name,
            params,
            rerun_on: req.rerun_on,
        };
        services.start_or_find(&req).map(attempt_ref)
    }

    fn status(&mut self, attempt_id: i64) -> Result<wit_engine::AttemptRef, String> {
        let services = self.services.ok_or_else(|| services_missing("engine.status"))?;
        services.attempt_status(attempt_id).map(attempt_ref)
    }
}

//! spade-scheduler: Digdag's schedule semantics as pure functions over a [`SlotState`]
//! (kept per project and workflow in the state database), shared by `spade scheduler`
//! (a local project) and the server (pushed projects).

mod slots;

pub use slots::{Decision, Skip, SlotState, backfill_slots, definition, fresh_state, plan, session_text, skip_slots};

/// The key of a workflow's [`SlotState`] among its project's values.
pub fn state_key(workflow: &str) -> String {
    format!("schedule:{workflow}")
}

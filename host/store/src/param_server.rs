//! Digdag's parameter server (`param_get>`/`param_set>`) on the state store: text values
//! per project, in `project_values` under `param_server/<key>`, with the time they were
//! set; a value older than [`TTL_SECONDS`] (Digdag's 90 days) reads as unset.
//!
//! Kept in the state store so that it needs no configuration: local runs share it through
//! `.spade/state.db`, hosts sharing a PostgreSQL state share it there.

use serde::{Deserialize, Serialize};

use crate::{Result, Store};

/// How long a value lives after it was last set (Digdag's `DEFAULT_TTL_IN_SEC`).
pub const TTL_SECONDS: i64 = 60 * 60 * 24 * 90;

const PREFIX: &str = "param_server/";

#[derive(Serialize, Deserialize)]
struct Stored {
    value: String,
    /// Unix seconds.
    set_at: i64,
}

/// The value of `key` in `project`'s parameter server at `now` (unix seconds).
pub fn get(store: &mut dyn Store, project: &str, key: &str, now: i64) -> Result<Option<String>> {
    let Some(text) = store.get_value(project, &format!("{PREFIX}{key}"))? else {
        return Ok(None);
    };
    // A value this module did not write (or a damaged one) reads as unset.
    let Ok(stored) = serde_json::from_str::<Stored>(&text) else {
        return Ok(None);
    };
    Ok((now - stored.set_at <= TTL_SECONDS).then_some(stored.value))
}

/// Sets `key` in `project`'s parameter server at `now`.
pub fn set(store: &mut dyn Store, project: &str, key: &str, value: &str, now: i64) -> Result<()> {
    let text = serde_json::to_string(&Stored { value: value.to_string(), set_at: now }).unwrap_or_default();
    store.set_value(project, &format!("{PREFIX}{key}"), &text)
}

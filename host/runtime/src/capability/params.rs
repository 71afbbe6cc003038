//! Capability `params` (`spade:operator/params`, for `param_get>`/`param_set>`): Digdag's
//! parameter server, text values shared by one project's workflows, kept by the engine
//! (its services decide where: the state store).

use super::services_missing;
use crate::host::{HostState, wit_params};

/// Longest key and value accepted (the state store keeps them as text).
const MAX_KEY_BYTES: usize = 1 << 10;
const MAX_VALUE_BYTES: usize = 1 << 20;

impl wit_params::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, String> {
        let services = self.services.ok_or_else(|| services_missing("params.get"))?;
        check_key(&key)?;
        services.param_get(&key)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), String> {
        let services = self.services.ok_or_else(|| services_missing("params.set"))?;
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value of {key} is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()));
        }
        services.param_set(&key, &value)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("a parameter key must have 1 to {MAX_KEY_BYTES} bytes"));
    }
    Ok(())
}

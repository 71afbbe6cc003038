//! The capabilities a plugin can be granted beyond `log` and `output` (always there), one
//! module each (its host functions and checks; `command` and `http` also own their grant
//! types and per-call state), and the one list the rest of the runtime matches on. A component's imports name them
//! ([`Capability::of_import`]), its manifest asks for them (`Wants`), its grants allow them
//! (`Grants`), and the plugin is linked with what both say (`Linked`).

pub(crate) mod command;
mod engine;
mod expressions;
pub(crate) mod http;
mod params;
mod secrets;
pub(crate) mod tcp;
mod workflows;

use std::fmt;

use serde_json::Value;
use spade_api::Object;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `spade:operator/secrets`: read granted secret keys.
    Secrets,
    /// `spade:operator/workflows`: load workflow files of the project (`call>`).
    Workflows,
    /// `spade:operator/expressions`: render `${...}` templates (`param_eval>`).
    Expressions,
    /// `spade:operator/engine`: start and watch attempts (`require>`).
    Engine,
    /// `spade:operator/command`: run commands in the task's executor (`sh>`, `py>`, `rb>`).
    Command,
    /// `spade:operator/params`: the project's parameter server (`param_get>`, `param_set>`).
    Params,
    /// `wasi:http/outgoing-handler`: outgoing HTTP to granted destinations (`http>`).
    Http,
    /// `wasi:sockets` TCP connections to granted `host:port` destinations (`pg>`, `mail>`).
    /// The interfaces are linked for every plugin (Rust's std may import them) with every
    /// use refused; the grant is what opens them, so imports never name this capability.
    Tcp,
}

/// What an import of a component is.
#[derive(Debug, PartialEq, Eq)]
pub enum Import {
    /// Always linked: WASI (other than http), and spade's `types`, `log` and `output`.
    Free,
    Capability(Capability),
    /// A `spade:operator` interface that does not exist (in any version).
    Unknown(String),
}

impl Capability {
    pub const ALL: [Capability; 8] = [
        Capability::Secrets,
        Capability::Workflows,
        Capability::Expressions,
        Capability::Engine,
        Capability::Command,
        Capability::Params,
        Capability::Http,
        Capability::Tcp,
    ];

    /// Its name in manifests, grants and messages.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Secrets => "secrets",
            Capability::Workflows => "workflows",
            Capability::Expressions => "expressions",
            Capability::Engine => "engine",
            Capability::Command => "command",
            Capability::Params => "params",
            Capability::Http => "http",
            Capability::Tcp => "tcp",
        }
    }

    /// Classifies an import name as a component spells it (`spade:operator/engine@0.3.0`).
    pub fn of_import(name: &str) -> Import {
        if name.starts_with("wasi:http/") {
            return Import::Capability(Capability::Http);
        }
        let Some(iface) = name.strip_prefix("spade:operator/") else {
            return Import::Free;
        };
        let iface = iface.split('@').next().unwrap_or(iface);
        match iface {
            "types" | "log" | "output" => Import::Free,
            other => match Capability::ALL
                .iter()
                .find(|c| c.name() == other && !matches!(**c, Capability::Http | Capability::Tcp))
            {
                Some(c) => Import::Capability(*c),
                None => Import::Unknown(other.to_string()),
            },
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest JSON text a plugin may hand to a capability (template scope, start params).
const MAX_CAPABILITY_INPUT: usize = 16 << 20;

fn services_missing(what: &str) -> String {
    format!("{what} is not available while the plugin is being described")
}

fn parse_object(what: &str, text: &str) -> Result<Object, String> {
    if text.len() > MAX_CAPABILITY_INPUT {
        return Err(format!("{what} is {} bytes; the limit is {} bytes", text.len(), MAX_CAPABILITY_INPUT));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what} must be a JSON object")),
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_capabilities() {
        assert_eq!(Capability::of_import("spade:operator/engine@0.3.0"), Import::Capability(Capability::Engine));
        assert_eq!(Capability::of_import("spade:operator/command@0.3.0"), Import::Capability(Capability::Command));
        assert_eq!(Capability::of_import("wasi:http/outgoing-handler@0.2.0"), Import::Capability(Capability::Http));
        assert_eq!(Capability::of_import("spade:operator/log@0.1.0"), Import::Free);
        assert_eq!(Capability::of_import("wasi:filesystem/types@0.2.0"), Import::Free);
        assert_eq!(Capability::of_import("spade:operator/http@0.3.0"), Import::Unknown("http".into()));
        assert_eq!(Capability::of_import("spade:operator/weird@0.3.0"), Import::Unknown("weird".into()));
    }
}

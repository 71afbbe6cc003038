//! spade-sdk: write spade operator plugins in Rust.
//!
//! This crate owns the guest side of the `spade:operator` WIT contract (`wit/operator.wit`):
//! it hides the generated bindings behind a typed [`Request`], [`Outcome`] builders, host
//! capabilities as plain functions ([`log`], [`output`], [`secrets`], [`workflows`],
//! [`expressions`], [`engine`], [`params`], [`http`], [`command`]) and the [`plugin!`] macro that exports an [`Operator`].
//! It knows nothing of any particular operator; see `sdk/README.md` for a full example.
//!
//! ```ignore
//! use spade_sdk::{output, Operator, Outcome, Request, Result};
//!
//! pub struct Echo;
//! impl Operator for Echo {
//!     fn run(req: Request) -> Result<Outcome> {
//!         output::print(req.command_str()?);
//!         Ok(Outcome::done().into())
//!     }
//! }
//! spade_sdk::plugin!(Echo, name = "spade-echo", operators = ["echo"]);
//! ```
//!
//! Panics: wasm32-wasip2 is built with `panic = "abort"` (stable Rust ships no unwinding std
//! for it), so a panic cannot be turned into an [`Outcome::Error`]. It traps the instance;
//! the panic message goes to stderr, which the host copies into the task log, and the host
//! fails the task. Return `Err(Failure)` for every error a user can cause.

extern crate self as spade_sdk;

pub mod command;
pub mod control;
pub mod csv;
pub mod duration;
pub mod encode;
mod host;
pub mod http;
pub mod lenient;
mod outcome;
mod request;
pub mod script;
pub mod settings;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod workspace;
pub mod yaml;

pub use host::{engine, expressions, log, output, params, secrets, workflows};
pub use outcome::{Done, Failure, Outcome};
pub use request::Request;
pub use serde_json::{Value, json};

/// A JSON object with its key order preserved (Digdag configs are ordered).
pub type Object = serde_json::Map<String, Value>;

/// `Result` with [`Failure`] as the default error, so `?` works on every SDK accessor.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// The version of the WIT package (`spade:operator`) this SDK was built against; reported
/// by every plugin in `describe`.
pub const WIT_VERSION: &str = "0.3.0";

/// One operator (or a family of operators sharing one implementation).
///
/// `run` is called once per task call: again after every [`Outcome::poll`], with the same
/// request and the new [`Request::state`]. An `Err` becomes the task's failure.
pub trait Operator {
    fn run(req: Request) -> Result<Outcome>;
}

/// The generated WIT bindings. Not a stable API: use the typed wrappers of this crate.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        // `plugin` plus `wasi:http/outgoing-handler`; a component imports only what it
        // calls, so plugins that never use `crate::http` do not import wasi:http.
        world: "http-plugin",
        // The wasi:http/io/clocks bindings `crate::http` uses.
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "spade_sdk::bindings",
        // The export glue expands inside plugin crates, which depend on this crate only.
        runtime_path: "spade_sdk::__private::wit_bindgen::rt",
    });
}

/// Export an [`Operator`] as the plugin of this crate (once per crate, at the top level).
///
/// One type serving one or more operators (it can tell them apart by
/// [`Request::operator`]):
///
/// ```ignore
/// spade_sdk::plugin!(Echo, name = "spade-echo", operators = ["echo"]);
/// ```
///
/// Several types, one per operator:
///
/// ```ignore
/// spade_sdk::plugin!(name = "spade-param", operators = {
///     "param_store" => Store,
///     "param_reset" => Reset,
/// });
/// ```
///
/// `describe` reports `name`, the plugin crate's own `CARGO_PKG_VERSION`, the operators and
/// [`WIT_VERSION`]. A call for an operator not listed fails the task with a clear message.
#[macro_export]
macro_rules! plugin {
    ($op:ty, name = $name:literal, operators = [$($opname:literal),+ $(,)?] $(,)?) => {
        $crate::plugin!(name = $name, operators = { $($opname => $op),+ });
    };
    (name = $name:literal, operators = { $($opname:literal => $op:ty),+ $(,)? } $(,)?) => {
        #[doc(hidden)]
        pub struct __SpadePlugin;

        impl $crate::bindings::Guest for __SpadePlugin {
            fn describe() -> $crate::bindings::PluginInfo {
                $crate::__private::describe($name, env!("CARGO_PKG_VERSION"), &[$($opname),+])
            }

            fn run(request: $crate::bindings::TaskRequest) -> $crate::bindings::Outcome {
                $crate::__private::run(request, $name, &[$($opname),+], |req| {
                    let operator = req.operator.clone();
                    match operator.as_str() {
                        $($opname => Some(<$op as $crate::Operator>::run(req)),)+
                        _ => None,
                    }
                })
            }
        }

        $crate::bindings::__export_plugin!(__SpadePlugin with_types_in $crate::bindings);
    };
}

/// Glue used by [`plugin!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::spade::operator::types as wit;
    use crate::{Failure, Object, Outcome, Request, Value};

    pub fn describe(name: &str, version: &str, operators: &[&str]) -> wit::PluginInfo {
        wit::PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            operators: operators.iter().map(|s| s.to_string()).collect(),
            wit_version: crate::WIT_VERSION.to_string(),
        }
    }

    pub fn run(
        request: wit::TaskRequest,
        plugin: &str,
        operators: &[&str],
        dispatch: impl FnOnce(Request) -> Option<crate::Result<Outcome>>,
    ) -> wit::Outcome {
        let outcome = match lift_request(request) {
            Err(field_error) => Err(Failure::new(format!(
                "plugin {plugin}: the host sent a malformed task request ({field_error}); \
                 this is a bug in spade or a plugin/host version mismatch"
            ))),
            Ok(req) => {
                let operator = req.operator.clone();
                dispatch(req).unwrap_or_else(|| {
                    let served: Vec<String> = operators.iter().map(|o| format!("{o}>")).collect();
                    Err(Failure::new(format!(
                        "plugin {plugin} does not provide operator '{operator}>' (it provides {})",
                        served.join(", ")
                    )))
                })
            }
        };
        lower_outcome(outcome.unwrap_or_else(Outcome::Error))
    }

    fn parse_json(field: &str, text: &str) -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{field} is not JSON: {e}"))
    }

    fn parse_object(field: &str, text: &str) -> Result<Object, String> {
        match parse_json(field, text)? {
            Value::Object(o) => Ok(o),
            other => Err(format!("{field} is not a JSON object: {other}")),
        }
    }

    pub fn lift_request(r: wit::TaskRequest) -> Result<Request, String> {
        Ok(Request {
            command: parse_json("command", &r.command)?,
            params: parse_object("params", &r.params)?,
            local_params: parse_object("local-params", &r.local_params)?,
            raw: parse_object("raw", &r.raw)?,
            state: r.state.as_deref().map(|s| parse_json("state", s)).transpose()?,
            operator: r.operator,
            task_name: r.task_name,
            project_name: r.project_name,
            workflow_name: r.workflow_name,
            attempt_id: r.attempt_id,
            session_id: r.session_id,
            session_uuid: r.session_uuid,
            session_time: r.session_time,
            timezone: r.timezone,
            retry_attempt_name: r.retry_attempt_name,
            retry_count: r.retry_count,
        })
    }

    pub fn lower_outcome(outcome: Outcome) -> wit::Outcome {
        match outcome {
            Outcome::Done(d) => wit::Outcome::Done(wit::Done {
                store_params: Value::Object(d.store_params).to_string(),
                reset_store_params: d.reset_store_params,
                export_params: Value::Object(d.export_params).to_string(),
                subtasks: d.subtasks_json.or_else(|| d.subtasks.map(|s| Value::Object(s).to_string())),
            }),
            Outcome::Poll { after_seconds, state } => {
                wit::Outcome::Poll(wit::Poll { after_seconds, state: state.to_string() })
            }
            Outcome::Error(f) => wit::Outcome::Error(wit::Failure { message: f.message, retryable: f.retryable }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_version_matches_the_contract() {
        let wit = include_str!("../../wit/operator.wit");
        let expected = format!("package spade:operator@{WIT_VERSION};");
        assert!(wit.lines().any(|l| l.trim() == expected), "wit/operator.wit does not declare {expected}");
    }
}

/// Compiles the example of `sdk/README.md`, so the documentation cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

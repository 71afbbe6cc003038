//! Conversion between `spade_api` values and the WIT records: the request is encoded to
//! JSON text fields, the outcome's JSON text fields are parsed and checked (shape and
//! size) so that a faulty plugin fails its own task with a message naming the field.

use serde_json::Value;
use spade_api::{Done, InvokeError, Object, Outcome, Subtasks, TaskRequest};

use crate::host::wit_types;
use crate::sandbox::truncate;

/// All JSON text of one outcome together (store/export params, subtasks, poll state).
pub const MAX_OUTCOME_BYTES: usize = 16 << 20;
/// Entries of `done.reset-store-params`, and the length of each.
pub const MAX_RESET_KEYS: usize = 10_000;
pub const MAX_RESET_KEY_BYTES: usize = 4 << 10;
/// Longest failure message kept (the rest is cut).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

pub(crate) fn encode_request(req: &TaskRequest) -> wit_types::TaskRequest {
    fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
        // Values built from serde_json types always serialize.
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    }
    wit_types::TaskRequest {
        operator: req.operator.clone(),
        task_name: req.task_name.clone(),
        project_name: req.project_name.clone(),
        workflow_name: req.workflow_name.clone(),
        attempt_id: req.attempt_id,
        session_id: req.session_id,
        session_uuid: req.session_uuid.clone(),
        session_time: req.session_time.clone(),
        timezone: req.timezone.clone(),
        retry_attempt_name: req.retry_attempt_name.clone(),
        command: json(&req.command),
        params: json(&req.params),
        local_params: json(&req.local_params),
        raw: json(&req.raw),
        state: req.state.as_ref().map(json),
        retry_count: req.retry_count,
    }
}

fn bad(plugin: &str, message: String) -> InvokeError {
    InvokeError::Plugin { plugin: plugin.to_string(), message }
}

fn describe_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_json(plugin: &str, field: &str, text: &str) -> Result<Value, InvokeError> {
    serde_json::from_str(text)
        .map_err(|e| bad(plugin, format!("returned invalid JSON in outcome field `{field}`: {e}")))
}

/// An object field; empty text counts as `{}` (plugins written by hand often leave it so).
fn parse_object(plugin: &str, field: &str, text: &str) -> Result<Object, InvokeError> {
    if text.trim().is_empty() {
        return Ok(Object::new());
    }
    match parse_json(plugin, field, text)? {
        Value::Object(m) => Ok(m),
        other => Err(bad(
            plugin,
            format!("returned {} in outcome field `{field}`, which must be a JSON object", describe_kind(&other)),
        )),
    }
}

fn check_size(plugin: &str, fields: &[(&str, usize)]) -> Result<(), InvokeError> {
    let total: usize = fields.iter().map(|(_, n)| n).sum();
    if total > MAX_OUTCOME_BYTES {
        let (name, largest) = fields.iter().max_by_key(|(_, n)| *n).copied().unwrap_or(("outcome", total));
        return Err(bad(
            plugin,
            format!(
                "returned an outcome of {} bytes (`{name}` alone is {largest} bytes); the limit is {} bytes (16 MiB) for all its JSON fields together",
                total, MAX_OUTCOME_BYTES
            ),
        ));
    }
    Ok(())
}

pub(crate) fn decode_outcome(plugin: &str, out: wit_types::Outcome) -> Result<Outcome, InvokeError> {
    match out {
        wit_types::Outcome::Done(d) => {
            check_size(
                plugin,
                &[
                    ("done.store-params", d.store_params.len()),
                    ("done.export-params", d.export_params.len()),
                    ("done.subtasks", d.subtasks.as_ref().map_or(0, |s| s.len())),
                    ("done.reset-store-params", d.reset_store_params.iter().map(|k| k.len()).sum()),
                ],
            )?;
            if d.reset_store_params.len() > MAX_RESET_KEYS {
                return Err(bad(
                    plugin,
                    format!(
                        "returned {} keys in `done.reset-store-params`; the limit is {MAX_RESET_KEYS}",
                        d.reset_store_params.len()
                    ),
                ));
            }
            if let Some(k) = d.reset_store_params.iter().find(|k| k.len() > MAX_RESET_KEY_BYTES) {
                return Err(bad(
                    plugin,
                    format!(
                        "returned a key of {} bytes in `done.reset-store-params`; the limit is {MAX_RESET_KEY_BYTES}",
                        k.len()
                    ),
                ));
            }
            let store_params = parse_object(plugin, "done.store-params", &d.store_params)?;
            let export_params = parse_object(plugin, "done.export-params", &d.export_params)?;
            let subtasks = match &d.subtasks {
                None => None,
                Some(s) if s.trim().is_empty() => {
                    return Err(bad(
                        plugin,
                        "returned an empty `done.subtasks`; it must be a JSON object (or none)".into(),
                    ));
                }
                // Kept as text (see `Subtasks`); only checked to be a JSON object.
                Some(s) => Some(Subtasks::from_json(s.clone()).map_err(|e| {
                    bad(plugin, format!("returned invalid JSON in outcome field `done.subtasks`: {e}"))
                })?),
            };
            Ok(Outcome::Done(Done { store_params, reset_store_params: d.reset_store_params, export_params, subtasks }))
        }
        wit_types::Outcome::Poll(p) => {
            check_size(plugin, &[("poll.state", p.state.len())])?;
            let state = parse_json(plugin, "poll.state", &p.state)?;
            Ok(Outcome::Poll { after_seconds: p.after_seconds, state })
        }
        wit_types::Outcome::Error(f) => {
            let message = if f.message.len() > MAX_MESSAGE_BYTES {
                format!(
                    "{} ... [message cut: {} more bytes]",
                    truncate(&f.message, MAX_MESSAGE_BYTES),
                    f.message.len() - truncate(&f.message, MAX_MESSAGE_BYTES).len()
                )
            } else {
                f.message
            };
            Ok(Outcome::Error { message, retryable: f.retryable })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(store: &str) -> wit_types::Outcome {
        wit_types::Outcome::Done(wit_types::Done {
            store_params: store.into(),
            reset_store_params: vec!["a.b".into()],
            export_params: "".into(),
            subtasks: Some(r#"{"+x": {"echo>": 1}}"#.into()),
        })
    }

    #[test]
    fn decodes_done() {
        let Outcome::Done(d) = decode_outcome("p", done(r#"{"k": 1}"#)).unwrap() else { panic!() };
        assert_eq!(d.store_params["k"], 1);
        assert!(d.export_params.is_empty());
        assert_eq!(d.reset_store_params, vec!["a.b"]);
        assert!(d.subtasks.unwrap().to_object().unwrap().contains_key("+x"));
    }

    #[test]
    fn names_the_bad_field() {
        let e = decode_outcome("p", done("[1]")).unwrap_err().to_string();
        assert!(e.contains("`done.store-params`") && e.contains("an array"), "{e}");
        let e = decode_outcome("p", done("{oops")).unwrap_err().to_string();
        assert!(e.contains("invalid JSON") && e.contains("`done.store-params`"), "{e}");
        let e = decode_outcome("p", wit_types::Outcome::Poll(wit_types::Poll { after_seconds: 1, state: "".into() }))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`poll.state`"), "{e}");
    }

    #[test]
    fn refuses_huge_outcomes() {
        let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(MAX_OUTCOME_BYTES));
        let e = decode_outcome("p", done(&big)).unwrap_err().to_string();
        assert!(e.contains("`done.store-params` alone is"), "{e}");
    }

    #[test]
    fn cuts_long_messages() {
        let f = wit_types::Outcome::Error(wit_types::Failure {
            message: "m".repeat(MAX_MESSAGE_BYTES + 10),
            retryable: true,
        });
        let Outcome::Error { message, retryable } = decode_outcome("p", f).unwrap() else { panic!() };
        assert!(retryable && message.ends_with("[message cut: 10 more bytes]"));
    }
}

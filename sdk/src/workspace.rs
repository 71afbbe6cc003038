//! The task's workspace files as Digdag's operators read them.

use serde_json::Value;

use crate::{Object, Request, expressions};

/// Largest template file read.
pub const MAX_TEMPLATE_BYTES: u64 = 16 << 20;

/// The text of an operator's command, as Digdag's `Workspace.templateCommand`: the
/// workspace file the argument names (`td>: queries/q.sql`), its `${...}` rendered with
/// `params`; the `data:` of a nested argument (`pg>: {data: ...}`, already evaluated); or
/// else the param `alias` (`query:`), as given. Errors name the file.
pub fn template_command(req: &Request, params: &Object, alias: &str) -> Result<String, String> {
    match &req.command {
        Value::String(file) if !file.trim().is_empty() => template_file(file.trim(), params),
        Value::Object(nested) => match nested.get("data") {
            Some(Value::String(data)) => Ok(data.clone()),
            _ => Err(format!("a nested {}> argument needs `data:` (the text itself)", req.operator)),
        },
        _ => match params.get(alias) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("give a file (`{}>: file.sql`) or `{alias}:`", req.operator)),
        },
    }
}

/// The workspace file `path` with its `${...}` rendered with `params`.
pub fn template_file(path: &str, params: &Object) -> Result<String, String> {
    let full = crate::command::workspace_path(path);
    let meta = std::fs::metadata(&full).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("{path} is larger than {MAX_TEMPLATE_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(&full).map_err(|e| format!("cannot read {path}: {e}"))?;
    expressions::render(&text, params).map_err(|e| format!("{e} in {path}"))
}

//! What a task sees: Digdag's parameter walk (digdag.md §3.1), built-in variables, and the
//! split of a task's own config into local params, the operator argument and raw subtrees.
//!
//! The walk, for task T: start from the attempt params; for each node N on the path from
//! the root to T: first the store params of N's transitive upstream siblings (each
//! followed by its descendants, in definition order), then — if N is an ancestor of T —
//! N's `_export`, the export params N's operator emitted, and N's own store params.
//! Finally T's own `_export`. Built-ins are laid over that (exports and stores cannot
//! override them); local keys come last and may shadow anything.

use chrono::{DateTime, TimeZone};
use serde_json::Value;
use spade_api::Object;
use spade_dig::Zone;
use spade_dig::{deep_merge, remove_key_path};

use crate::tree::{TaskId, Tree};

/// Keys of a task's config that are directives for the engine, not params.
const NOT_PARAMS: &[&str] = &["_export", "_error", "_check", "_do", "_else_do"];
/// Subtrees handed to the operator unevaluated.
pub const RAW_KEYS: &[&str] = &["_do", "_else_do"];

/// Apply one task's store update: reset keys first, then merge (Digdag ParameterUpdate).
fn apply_store(tree: &Tree, id: TaskId, params: &mut Object) {
    if let Some(done) = &tree.get(id).result {
        for key in &done.reset_store_params {
            remove_key_path(params, key);
        }
        if !done.store_params.is_empty() {
            deep_merge(params, &done.store_params);
        }
    }
}

/// Store params of `id` and its descendants, preorder in definition order.
fn apply_subtree_stores(tree: &Tree, id: TaskId, params: &mut Object) {
    let t = tree.get(id);
    if !t.subtree_has_store {
        return;
    }
    apply_store(tree, id, params);
    for &c in &t.children {
        apply_subtree_stores(tree, c, params);
    }
}

/// The merged params of `id` before built-ins and local keys (steps 1–5 of §3.1).
pub fn collect(tree: &Tree, id: TaskId, attempt_params: &Object) -> Object {
    let mut params = attempt_params.clone();
    let chain = tree.chain(id);
    for (i, &node) in chain.iter().enumerate() {
        for &u in tree.get(node).store_upstreams.iter() {
            apply_subtree_stores(tree, u, &mut params);
        }
        if i + 1 < chain.len() {
            let t = tree.get(node);
            if let Some(Value::Object(export)) = t.config.get("_export") {
                deep_merge(&mut params, export);
            }
            if let Some(done) = &t.result
                && !done.export_params.is_empty()
            {
                deep_merge(&mut params, &done.export_params);
            }
            apply_store(tree, node, &mut params);
        }
    }
    if let Some(Value::Object(export)) = tree.get(id).config.get("_export") {
        deep_merge(&mut params, export);
    }
    params
}

/// The store params a group's `_error` task sees: every store of the failed task's
/// subtree, in definition order (Digdag collectErrorParams).
pub fn subtree_stores(tree: &Tree, id: TaskId) -> Object {
    let mut params = Object::new();
    for &c in &tree.get(id).children {
        apply_subtree_stores(tree, c, &mut params);
    }
    params
}

/// The task's own keys as operator input: `op>: arg` becomes `_command`, `_type` is set,
/// directives are dropped. Returns (local params, raw subtrees).
pub fn local_config(config: &Object, operator: Option<&str>) -> (Object, Object) {
    let mut local = Object::new();
    let mut raw = Object::new();
    for (k, v) in config {
        if RAW_KEYS.contains(&k.as_str()) {
            raw.insert(k.clone(), v.clone());
        } else if NOT_PARAMS.contains(&k.as_str()) {
        } else if let Some(op) = k.strip_suffix('>') {
            if Some(op) == operator {
                local.insert("_type".into(), Value::String(op.to_string()));
                local.insert("_command".into(), v.clone());
            }
        } else {
            local.insert(k.clone(), v.clone());
        }
    }
    (local, raw)
}

/// Like Digdag's AttemptBuilder: the schedule slots around the session, as attempt params.
pub fn schedule_params(workflow: &spade_dig::WorkflowDef, session_time: DateTime<Zone>, params: &mut Object) {
    if let Some(schedule) = &workflow.schedule {
        if let Some(last) = schedule.last_session_time(session_time) {
            time_vars("last_session", &last, params);
        }
        if let Some(next) = schedule.next_session_time(session_time) {
            time_vars("next_session", &next, params);
        }
    }
}

/// Format a session-like time the way Digdag's RuntimeParams does, under `prefix`
/// (`session`, `last_session`, `next_session`).
pub fn time_vars(prefix: &str, t: &DateTime<Zone>, out: &mut Object) {
    out.insert(format!("{prefix}_time"), t.format("%Y-%m-%dT%H:%M:%S%:z").to_string().into());
    out.insert(format!("{prefix}_date"), t.format("%Y-%m-%d").to_string().into());
    out.insert(format!("{prefix}_date_compact"), t.format("%Y%m%d").to_string().into());
    out.insert(format!("{prefix}_local_time"), t.format("%Y-%m-%d %H:%M:%S").to_string().into());
    out.insert(format!("{prefix}_tz_offset"), t.format("%z").to_string().into());
    out.insert(format!("{prefix}_unixtime"), Value::from(t.timestamp()));
}

/// Digdag's `last_executed_session_*` (RuntimeParams): worked out from a
/// `last_executed_session_time` param (`yyyy-MM-ddTHH:mm:ss+hh:mm`) when the task's params have
/// one, else present but empty, as in local runs (`setEmptyTimeParameters`: every value is
/// `""` except `_tz_offset`, the zone's offset at the epoch). A value that is not such a time
/// sets nothing, as Digdag skips it.
pub fn last_executed_vars(params: &Object, tz: Zone) -> Object {
    const PREFIX: &str = "last_executed_session";
    let mut out = Object::new();
    match params.get("last_executed_session_time") {
        None | Some(Value::Null) => {
            for suffix in ["time", "date", "date_compact", "local_time", "unixtime"] {
                out.insert(format!("{PREFIX}_{suffix}"), "".into());
            }
            let epoch = tz.timestamp_opt(0, 0).single().expect("the epoch exists in every zone");
            out.insert(format!("{PREFIX}_tz_offset"), epoch.format("%z").to_string().into());
        }
        Some(Value::String(text)) => {
            if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%:z") {
                time_vars(PREFIX, &t.with_timezone(&tz), &mut out);
                // Digdag computes the others from it but leaves the param itself as given.
                out.remove(&format!("{PREFIX}_time"));
            }
        }
        Some(_) => {}
    }
    out
}

/// Identity of the attempt, for the built-in variables.
pub struct Identity<'a> {
    pub timezone: Zone,
    pub session_time: DateTime<Zone>,
    pub project_id: i64,
    pub session_id: i64,
    pub session_uuid: &'a str,
    pub attempt_id: i64,
    pub retry_attempt_name: Option<&'a str>,
}

/// Built-ins shared by every task of the attempt (`task_name` is added per task).
pub fn builtins(id: &Identity<'_>) -> Object {
    let mut out = Object::new();
    out.insert("timezone".into(), id.timezone.name().into());
    out.insert("project_id".into(), id.project_id.into());
    out.insert("session_uuid".into(), id.session_uuid.into());
    out.insert("session_id".into(), id.session_id.into());
    out.insert("attempt_id".into(), id.attempt_id.into());
    time_vars("session", &id.session_time, &mut out);
    if let Some(name) = id.retry_attempt_name {
        out.insert("retry_attempt_name".into(), name.into());
    }
    out
}

/// `t` seen in zone `tz`.
pub fn in_zone(t: DateTime<Zone>, tz: Zone) -> DateTime<Zone> {
    tz.from_utc_datetime(&t.naive_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn local_config_splits_operator_directives_and_raw() {
        let config: Object = serde_json::from_value(json!({
            "x": 1, "for_each>": {"a": [1]}, "_do": {"echo>": "${a}"},
            "_export": {"e": 1}, "_error": {"echo>": "err"}, "_parallel": true
        }))
        .unwrap();
        let (local, raw) = local_config(&config, Some("for_each"));
        assert_eq!(
            Value::Object(local),
            json!({"x": 1, "_type": "for_each", "_command": {"a": [1]}, "_parallel": true})
        );
        assert_eq!(Value::Object(raw), json!({"_do": {"echo>": "${a}"}}));
    }

    #[test]
    fn last_executed_vars_are_empty_without_a_last_execution() {
        let ktm = Zone::parse("Asia/Kathmandu").unwrap();
        let out = last_executed_vars(&Object::new(), ktm);
        assert_eq!(
            Value::Object(out),
            json!({
                "last_executed_session_time": "", "last_executed_session_date": "",
                "last_executed_session_date_compact": "", "last_executed_session_local_time": "",
                "last_executed_session_unixtime": "",
                // Kathmandu was +05:30 in 1970 (it moved to +05:45 in 1986).
                "last_executed_session_tz_offset": "+0530",
            })
        );
        let fixed = last_executed_vars(&Object::new(), Zone::parse("-03:00").unwrap());
        assert_eq!(fixed["last_executed_session_tz_offset"], "-0300");
        let null: Object = serde_json::from_value(json!({"last_executed_session_time": null})).unwrap();
        assert_eq!(last_executed_vars(&null, Zone::UTC)["last_executed_session_time"], "");
    }

    #[test]
    fn last_executed_vars_come_from_the_param_when_set() {
        let tokyo = Zone::parse("Asia/Tokyo").unwrap();
        let given: Object =
            serde_json::from_value(json!({"last_executed_session_time": "2024-03-01T00:00:00+00:00"})).unwrap();
        let out = last_executed_vars(&given, tokyo);
        assert_eq!(
            Value::Object(out),
            json!({
                "last_executed_session_date": "2024-03-01", "last_executed_session_date_compact": "20240301",
                "last_executed_session_local_time": "2024-03-01 09:00:00",
                "last_executed_session_tz_offset": "+0900", "last_executed_session_unixtime": 1709251200,
            })
        );
        let bad: Object = serde_json::from_value(json!({"last_executed_session_time": "yesterday"})).unwrap();
        assert!(last_executed_vars(&bad, tokyo).is_empty());
    }

    #[test]
    fn time_vars_use_digdag_formats() {
        let tz = Zone::parse("America/Los_Angeles").unwrap();
        let t = tz.with_ymd_and_hms(2016, 1, 30, 0, 0, 0).unwrap();
        let mut out = Object::new();
        time_vars("session", &t, &mut out);
        assert_eq!(out["session_time"], "2016-01-30T00:00:00-08:00");
        assert_eq!(out["session_date_compact"], "20160130");
        assert_eq!(out["session_local_time"], "2016-01-30 00:00:00");
        assert_eq!(out["session_tz_offset"], "-0800");
        assert_eq!(out["session_unixtime"], 1454140800);
    }
}

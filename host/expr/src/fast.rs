//! A shortcut for the most common templates, rendered in Rust without entering JS:
//! `${name}` and `${name.field.field}` references to params holding a string, a whole
//! number, a boolean or null — exactly what digdag.js gives for them (the string itself,
//! the number's digits, `true`/`false`, empty text for null or a missing field).
//!
//! Anything else (another expression, a name the params lack — JS must raise the
//! ReferenceError —, a fractional number, an object or array, a field of something that is
//! not an object) makes the whole config go through JS, so results never differ.

use serde_json::Value;

use crate::template::{Segment, needs_eval, parse};
use crate::{Object, RAW_KEYS};

/// The config walked as [`crate::Evaluator::eval_config`] does, or `None` when some
/// template needs JS.
pub fn eval_config(config: &Object, scope: &Object) -> Option<Object> {
    walk_object(config, scope)
}

fn walk_object(object: &Object, scope: &Object) -> Option<Object> {
    let mut built = Object::new();
    for (key, value) in object {
        let evaluated =
            if RAW_KEYS.contains(&key.as_str()) { value.clone() } else { walk_value(value, scope, &built)? };
        built.insert(key.clone(), evaluated);
    }
    Some(built)
}

fn walk_value(value: &Value, scope: &Object, built: &Object) -> Option<Value> {
    Some(match value {
        Value::Object(o) => Value::Object(walk_object(o, scope)?),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| walk_value(v, scope, built)).collect::<Option<Vec<_>>>()?)
        }
        Value::String(text) if needs_eval(text) => Value::String(render(text, scope, built)?),
        other => other.clone(),
    })
}

fn render(template: &str, scope: &Object, built: &Object) -> Option<String> {
    let mut out = String::new();
    for segment in parse(template) {
        match segment {
            Segment::Literal(text) => out.push_str(&text),
            Segment::Expr(expr) => out.push_str(&reference(expr, scope, built)?),
        }
    }
    Some(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// `name(.field)*` resolved against the already-evaluated keys, then the params.
fn reference(expr: &str, scope: &Object, built: &Object) -> Option<String> {
    let mut parts = expr.trim().split('.');
    let name = parts.next()?;
    if !is_identifier(name) {
        return None;
    }
    let mut value = built.get(name).or_else(|| scope.get(name))?;
    for field in parts {
        if !is_identifier(field) {
            return None;
        }
        match value {
            Value::Object(o) => match o.get(field) {
                Some(v) => value = v,
                None => return Some(String::new()),
            },
            _ => return None,
        }
    }
    match value {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn simple_references_render_like_digdag() {
        let scope = obj(json!({"s": "x", "n": 3, "b": true, "z": null, "o": {"a": {"b": "deep"}}, "d": "${s}"}));
        let out = eval_config(
            &obj(json!({"a": "${s}-${n}-${b}-${z}", "b": "${o.a.b}", "c": "${o.missing}", "d": "${d}", "e": "$${s}"})),
            &scope,
        )
        .unwrap();
        assert_eq!(Value::Object(out), json!({"a": "x-3-true-", "b": "deep", "c": "", "d": "${s}", "e": "$x"}));
    }

    #[test]
    fn earlier_keys_of_the_same_level_win_over_params() {
        let scope = obj(json!({"a": "raw"}));
        let out = eval_config(&obj(json!({"a": "${b}", "b": "later", "c": "${a}"})), &obj(json!({"a": "raw", "b": "p"})))
            .unwrap();
        assert_eq!(out["c"], "p");
        let nested = eval_config(&obj(json!({"a": "x", "n": {"k": "${a}"}})), &scope).unwrap();
        assert_eq!(nested["n"]["k"], "raw", "a nested object sees the params, not the outer keys");
    }

    #[test]
    fn anything_else_goes_to_js() {
        let scope = obj(json!({"f": 1.5, "o": {"a": 1}, "l": [1], "s": "x"}));
        for t in ["${f}", "${o}", "${l}", "${missing}", "${s.length}", "${s + 1}", "${1}", "${o.a.b}"] {
            assert!(eval_config(&obj(json!({ "k": t })), &scope).is_none(), "{t}");
        }
        assert!(eval_config(&obj(json!({"k": "${secret:x}"})), &scope).is_some());
    }
}

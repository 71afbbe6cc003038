//! Pure helpers of Digdag's params model on ordered objects.
//!
//! `deep_merge` is Digdag's `Config.merge` (objects merge recursively, anything else
//! replaces, an existing key keeps its position); `remove_key_path` is what a store reset
//! (`param_reset>`) does; `set_dotted` builds `-p db.name=x`. No evaluation, no IO.

use serde_json::Value;
use spade_api::Object;

/// Merge `src` into `dst`: objects merge recursively; arrays and scalars replace. A key that
/// already exists keeps its position; new keys are appended in `src` order.
pub fn deep_merge(dst: &mut Object, src: &Object) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Object(d)), Value::Object(s)) => deep_merge(d, s),
            (Some(existing), _) => *existing = v.clone(),
            (None, _) => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Remove the key at a dotted path (`"a.b.c"` removes `c` from `obj.a.b`). Returns whether
/// something was removed. Parents are left in place (possibly empty); a path through a
/// non-object removes nothing.
pub fn remove_key_path(obj: &mut Object, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return false };
    let mut cur = obj;
    for p in parts {
        match cur.get_mut(p) {
            Some(Value::Object(next)) => cur = next,
            _ => return false,
        }
    }
    // `shift_remove` keeps the order of the remaining keys.
    cur.shift_remove(last).is_some()
}

/// Set `value` at a dotted path, creating (or replacing non-object) intermediate objects:
/// `set_dotted(obj, "db.name", "x")` makes `{"db": {"name": "x"}}` and keeps other keys of
/// an existing `db`.
pub fn set_dotted(obj: &mut Object, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = obj;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), value);
            return;
        }
        let slot = cur.entry(p.to_string()).or_insert_with(|| Value::Object(Object::new()));
        if !slot.is_object() {
            *slot = Value::Object(Object::new());
        }
        let Value::Object(next) = slot else { unreachable!("just made an object") };
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::obj;
    use serde_json::json;

    #[test]
    fn deep_merge_is_digdag_config_merge() {
        let mut d = obj(json!({"a": 1, "o": {"x": 1, "y": {"p": 1}}, "arr": [1, 2], "s": "keep"}));
        deep_merge(
            &mut d,
            &obj(json!({"o": {"y": {"q": 2}, "z": 3}, "arr": [3], "a": {"now": "object"}, "new": true})),
        );
        assert_eq!(
            d,
            obj(
                json!({"a": {"now": "object"}, "o": {"x": 1, "y": {"p": 1, "q": 2}, "z": 3}, "arr": [3], "s": "keep", "new": true})
            )
        );
        let keys: Vec<&String> = d.keys().collect();
        assert_eq!(keys, ["a", "o", "arr", "s", "new"]);
        let inner: Vec<&String> = d["o"].as_object().unwrap().keys().collect();
        assert_eq!(inner, ["x", "y", "z"]);
        // An object replaces a scalar and vice versa.
        let mut d = obj(json!({"a": {"x": 1}}));
        deep_merge(&mut d, &obj(json!({"a": 5})));
        assert_eq!(d, obj(json!({"a": 5})));
    }

    #[test]
    fn remove_key_path_removes_nested_keys_only() {
        let mut d = obj(json!({"a": 1, "shape": {"sides": 4, "name": "sq"}, "b": 2, "s": "x"}));
        assert!(remove_key_path(&mut d, "shape.sides"));
        assert_eq!(d, obj(json!({"a": 1, "shape": {"name": "sq"}, "b": 2, "s": "x"})));
        assert!(remove_key_path(&mut d, "a"));
        let keys: Vec<&String> = d.keys().collect();
        assert_eq!(keys, ["shape", "b", "s"]);
        assert!(!remove_key_path(&mut d, "missing"));
        assert!(!remove_key_path(&mut d, "s.x"));
        assert!(!remove_key_path(&mut d, "shape.name.deeper"));
        assert!(remove_key_path(&mut d, "shape.name"));
        assert_eq!(d["shape"], json!({}));
    }

    #[test]
    fn set_dotted_builds_nested_objects() {
        let mut d = Object::new();
        set_dotted(&mut d, "db.name", json!("x"));
        set_dotted(&mut d, "db.port", json!("5432"));
        set_dotted(&mut d, "plain", json!("p"));
        assert_eq!(d, obj(json!({"db": {"name": "x", "port": "5432"}, "plain": "p"})));
        set_dotted(&mut d, "plain.sub", json!("s"));
        assert_eq!(d["plain"], json!({"sub": "s"}));
        set_dotted(&mut d, "db", json!("flat"));
        assert_eq!(d["db"], json!("flat"));
    }
}

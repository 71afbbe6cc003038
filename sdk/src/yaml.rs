//! YAML documents as JSON values, for operators that read YAML (`td_load>`'s Embulk config,
//! the workflow `http_call>` fetches): maps with string keys, lists and scalars. Tags are
//! ignored; aliases and non-scalar keys are refused with a message.

use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::Object;

/// The first document of `text` as JSON (`null` for an empty text).
pub fn to_json(text: &str) -> Result<Value, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    match docs.first() {
        Some(doc) => convert(doc),
        None => Ok(Value::Null),
    }
}

fn convert(y: &Yaml) -> Result<Value, String> {
    Ok(match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or_else(|_| Value::String(r.clone())),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(convert).collect::<Result<_, _>>()?),
        Yaml::Hash(map) => {
            let mut out = Object::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Real(r) => r.clone(),
                    other => return Err(format!("unsupported map key {other:?}")),
                };
                out.insert(key, convert(v)?);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_become_json() {
        let v = to_json("a: 1\nb: [x, 2.5, true, null]\n+t:\n  echo>: hi\n").unwrap();
        assert_eq!(v, json!({"a": 1, "b": ["x", 2.5, true, null], "+t": {"echo>": "hi"}}));
        assert_eq!(to_json("").unwrap(), Value::Null);
        assert!(to_json("a: [").is_err());
    }
}

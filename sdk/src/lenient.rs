//! Reads JSON params into Rust types the way Digdag's `Config.get` (Jackson) does.
//!
//! Digdag turns every `${...}` result into a string, so `loop>: ${n}` arrives as `"3"` and
//! `if>: ${x == 1}` as `"true"`. Jackson coerces such strings into numbers and booleans (and
//! scalars into strings), and `for_each>` accepts a list written as a JSON string. Plain serde
//! would reject all of these, so operator options go through [`Lenient`] instead.
//! It never invents values: a string that does not parse as the wanted type is still an error.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Number, Value};

/// Deserialize `value` into `T`, coercing strings to numbers/booleans/lists/objects and
/// scalars to strings where `T` asks for them.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Lenient(value))
}

/// A JSON value seen through Digdag's coercion rules.
pub struct Lenient(pub Value);

fn parse_number(s: &str) -> Option<Number> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    s.parse::<f64>().ok().and_then(Number::from_f64)
}

/// A string that holds a JSON container (`'[3, 1, 2]'`), parsed; `None` for anything else.
fn parse_container(s: &str, open: char) -> Option<Value> {
    let t = s.trim();
    if !t.starts_with(open) {
        return None;
    }
    serde_json::from_str::<Value>(t).ok().filter(|v| v.is_array() || v.is_object())
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Lenient {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl Lenient {
    fn visit_number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_json::Error> {
        if let Value::String(s) = &self.0
            && let Some(n) = parse_number(s)
        {
            return de::Deserializer::deserialize_any(n, visitor);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn visit_container<'de, V: Visitor<'de>>(self, open: char, visitor: V) -> Result<V::Value, serde_json::Error> {
        if let Value::String(s) = &self.0
            && let Some(parsed) = parse_container(s, open)
        {
            return de::Deserializer::deserialize_any(Lenient(parsed), visitor);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }
}

impl<'de> de::Deserializer<'de> for Lenient {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => de::Deserializer::deserialize_any(n, visitor),
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Lenient));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(map) => {
                let mut access = MapDeserializer::new(map.into_iter().map(|(k, v)| (k, Lenient(v))));
                let value = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if let Value::String(s) = &self.0 {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" => return visitor.visit_bool(true),
                "false" => return visitor.visit_bool(false),
                _ => {}
            }
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.visit_number(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Number(n) => visitor.visit_string(n.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            other => Lenient(other).deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Lenient(other)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.visit_container('[', visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.visit_container('[', visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.visit_container('[', visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.visit_container('{', visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.visit_container('{', visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct identifier
    }
}

#[cfg(test)]
mod tests {
    use super::from_value;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn strings_become_numbers_and_booleans() {
        assert_eq!(from_value::<u32>(json!("3")).unwrap(), 3);
        assert_eq!(from_value::<i64>(json!(" -7 ")).unwrap(), -7);
        assert_eq!(from_value::<f64>(json!("2.5")).unwrap(), 2.5);
        assert!(from_value::<bool>(json!("true")).unwrap());
        assert!(!from_value::<bool>(json!("False")).unwrap());
    }

    #[test]
    fn scalars_become_strings() {
        assert_eq!(from_value::<String>(json!(10)).unwrap(), "10");
        assert_eq!(from_value::<String>(json!(true)).unwrap(), "true");
    }

    #[test]
    fn json_strings_become_containers() {
        assert_eq!(from_value::<Vec<u8>>(json!("[3, 1, 2]")).unwrap(), vec![3, 1, 2]);
        #[derive(Deserialize, Debug, PartialEq)]
        struct Range {
            from: i64,
            to: i64,
        }
        assert_eq!(from_value::<Range>(json!("{\"from\": 1, \"to\": \"5\"}")).unwrap(), Range { from: 1, to: 5 });
    }

    #[test]
    fn nested_fields_are_coerced() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Opts {
            count: u32,
            flag: Option<bool>,
            names: Vec<String>,
        }
        let opts: Opts = from_value(json!({"count": "4", "flag": "true", "names": [1, "b"]})).unwrap();
        assert_eq!(opts, Opts { count: 4, flag: Some(true), names: vec!["1".into(), "b".into()] });
    }

    #[test]
    fn garbage_is_still_an_error() {
        let err = from_value::<u32>(json!("three")).unwrap_err().to_string();
        assert!(err.contains("invalid type: string \"three\""), "{err}");
        assert!(from_value::<bool>(json!("yes")).is_err());
        assert!(from_value::<Vec<u8>>(json!("[1, 2")).is_err());
        assert!(from_value::<u8>(json!("300")).is_err());
    }

    #[test]
    fn enums_from_strings() {
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "lowercase")]
        enum Mode {
            None,
            Failed,
        }
        assert_eq!(from_value::<Mode>(json!("failed")).unwrap(), Mode::Failed);
        assert!(from_value::<Mode>(json!("other")).is_err());
    }
}

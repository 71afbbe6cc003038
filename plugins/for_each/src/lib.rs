//! `for_each>: {key: [values], ...}`: generate one child per combination of values (the
//! cartesian product, first key outermost, values in list order), each a copy of the raw
//! `_do` exporting its keys (Digdag ForEachOperatorFactory). A list may be written as a JSON
//! string (`'[1, 2]'`), and values may be objects. Children are named
//! `+for-<keyIdx>=<key>=<valIdx>=<value>&...` with key and value cut to 8 characters and
//! URL-encoded, exactly as Digdag names them (retries and resume match tasks by name).
//! `_parallel` is copied into the generated group. Uses no capability.

use spade_sdk::control::{Generated, MAX_GENERATED_TASKS, check_count, child, parallel_of, required_body};
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, Value, lenient};

pub struct ForEach;

impl Operator for ForEach {
    fn run(req: Request) -> Result<Outcome> {
        let spec: Object = req.command_as()?;
        let mut entries = Vec::with_capacity(spec.len());
        for (key, values) in spec {
            let values: Vec<Value> = lenient::from_value(values).map_err(|e| {
                Failure::new(format!(
                    "{}: the values of '{key}' must be a list (or a JSON string of a list): {e}",
                    req.location()
                ))
            })?;
            entries.push((key, values));
        }
        check_count(&req, "for_each", combination_count(&entries))?;
        let body = required_body(&req, "_do")?;
        let mut generated = Generated::new();
        for combination in combinations(&entries) {
            let exports: Object = combination.iter().map(|c| (c.key.to_string(), c.value.clone())).collect();
            generated.push(&task_name(&combination), child(&body, exports));
        }
        if let Some(parallel) = parallel_of(&req) {
            generated.set("_parallel", parallel);
        }
        Ok(Outcome::done().generated(generated).into())
    }
}

/// One key's choice in a combination, with the indexes used in the task name.
#[derive(Clone, Debug, PartialEq)]
struct Pick<'a> {
    key_index: usize,
    key: &'a str,
    value_index: usize,
    value: &'a Value,
}

/// The product of the list sizes, stopping early once past the limit (no overflow).
fn combination_count(entries: &[(String, Vec<Value>)]) -> u64 {
    let mut count: u64 = 1;
    for (_, values) in entries {
        count = count.saturating_mul(values.len() as u64);
        if count > MAX_GENERATED_TASKS {
            break;
        }
    }
    count
}

/// The cartesian product, first key outermost.
///
/// Mirrors Digdag's `buildCombinations` including its quirk: when the product so far is
/// empty (no keys yet, or a key with an empty list), the next key starts a fresh product.
/// So `{a: [], b: [1, 2]}` yields the two combinations of `b` alone, and an empty last list
/// yields none.
fn combinations(entries: &[(String, Vec<Value>)]) -> Vec<Vec<Pick<'_>>> {
    let mut current: Vec<Vec<Pick<'_>>> = Vec::new();
    for (key_index, (key, values)) in entries.iter().enumerate() {
        let picks = values.iter().enumerate().map(|(value_index, value)| Pick { key_index, key, value_index, value });
        current = if current.is_empty() {
            picks.map(|p| vec![p]).collect()
        } else {
            let picks: Vec<_> = picks.collect();
            current
                .iter()
                .flat_map(|seed| {
                    picks.iter().map(move |p| {
                        let mut next = seed.clone();
                        next.push(p.clone());
                        next
                    })
                })
                .collect()
        };
    }
    current
}

/// `+for-0=fruit=0=apple&1=verb=0=eat`.
fn task_name(combination: &[Pick<'_>]) -> String {
    let parts: Vec<String> = combination
        .iter()
        .map(|p| {
            let value = match p.value {
                Value::String(s) => name_tag(s),
                other => name_tag(&other.to_string()),
            };
            format!("{}={}={}={}", p.key_index, name_tag(p.key), p.value_index, value)
        })
        .collect();
    format!("+for-{}", parts.join("&"))
}

/// Digdag's `nameTag`: the first 8 UTF-16 units, then `URLEncoder.encode(.., "UTF-8")` with
/// `+` replaced by `%20` (`+` starts a task name).
fn name_tag(s: &str) -> String {
    let units: Vec<u16> = s.encode_utf16().take(8).collect();
    // Java's substring may split a surrogate pair; its encoder writes the lone half as '?'.
    let cut = char::decode_utf16(units).map(|c| c.unwrap_or('?')).collect::<String>();
    url_encode(&cut)
}

/// `java.net.URLEncoder.encode(s, "UTF-8")`, with spaces as `%20` instead of `+`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

spade_sdk::plugin!(ForEach, name = "spade-for-each", operators = ["for_each"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::json;
    use spade_sdk::testing::{MockHost, request};

    fn entries(v: Value) -> Vec<(String, Vec<Value>)> {
        v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_array().unwrap().clone())).collect()
    }

    fn names(v: Value) -> Vec<String> {
        let e = entries(v);
        combinations(&e).iter().map(|c| task_name(c)).collect()
    }

    #[test]
    fn cartesian_first_key_outermost() {
        assert_eq!(
            names(json!({"fruit": ["apple", "orange"], "verb": ["eat", "throw"]})),
            [
                "+for-0=fruit=0=apple&1=verb=0=eat",
                "+for-0=fruit=0=apple&1=verb=1=throw",
                "+for-0=fruit=1=orange&1=verb=0=eat",
                "+for-0=fruit=1=orange&1=verb=1=throw",
            ]
        );
    }

    #[test]
    fn names_are_cut_and_url_encoded() {
        assert_eq!(name_tag("abcdefghij"), "abcdefgh");
        assert_eq!(name_tag("a b+c/d"), "a%20b%2Bc%2Fd");
        assert_eq!(name_tag("x.y-z*_~"), "x.y-z*_%7E");
        assert_eq!(name_tag("héllo"), "h%C3%A9llo");
        // 8 UTF-16 units: 7 ASCII + the high half of an emoji, which Java encodes as '?'.
        assert_eq!(name_tag("abcdefg😀"), "abcdefg%3F");
        assert_eq!(name_tag("ab😀"), "ab%F0%9F%98%80");
        assert_eq!(
            names(json!({"count": [1, 2.5], "very_long_key": [{"kind": "cat"}, [1, 2], null]})),
            [
                "+for-0=count=0=1&1=very_lon=0=%7B%22kind%22%3A",
                "+for-0=count=0=1&1=very_lon=1=%5B1%2C2%5D",
                "+for-0=count=0=1&1=very_lon=2=null",
                "+for-0=count=1=2.5&1=very_lon=0=%7B%22kind%22%3A",
                "+for-0=count=1=2.5&1=very_lon=1=%5B1%2C2%5D",
                "+for-0=count=1=2.5&1=very_lon=2=null",
            ]
        );
    }

    #[test]
    fn empty_lists_follow_digdag() {
        assert_eq!(names(json!({"a": [], "b": [1, 2]})), ["+for-1=b=0=1", "+for-1=b=1=2"]);
        assert!(names(json!({"a": [1], "b": []})).is_empty());
        assert!(names(json!({})).is_empty());
    }

    #[test]
    fn count_stops_past_the_limit() {
        let big: Vec<Value> = (0..100).map(|i| json!(i)).collect();
        let e =
            vec![("a".into(), big.clone()), ("b".into(), big.clone()), ("c".into(), big.clone()), ("d".into(), big)];
        assert!(combination_count(&e) > MAX_GENERATED_TASKS);
        assert_eq!(combination_count(&entries(json!({"a": [1, 2], "b": [1, 2, 3]}))), 6);
    }

    #[test]
    fn generates_children_exporting_each_key() {
        let req = request("for_each")
            .command(json!({"num": "[3, 1]", "pet": [{"kind": "cat"}]}))
            .local("_parallel", json!(true))
            .raw("_do", json!({"echo>": "${num} ${pet.kind}"}))
            .build();
        let done = MockHost::default().run::<ForEach>(req).unwrap();
        let sub = Value::Object(done.as_done().unwrap().subtasks_object().unwrap());
        assert_eq!(
            sub,
            json!({
                "+for-0=num=0=3&1=pet=0=%7B%22kind%22%3A": {
                    "echo>": "${num} ${pet.kind}", "_export": {"num": 3, "pet": {"kind": "cat"}}
                },
                "+for-0=num=1=1&1=pet=0=%7B%22kind%22%3A": {
                    "echo>": "${num} ${pet.kind}", "_export": {"num": 1, "pet": {"kind": "cat"}}
                },
                "_parallel": true,
            })
        );
    }

    #[test]
    fn errors() {
        let run = |cmd: Value, with_do: bool| {
            let mut b = request("for_each").command(cmd);
            if with_do {
                b = b.raw("_do", json!({"echo>": "x"}));
            }
            MockHost::default().run::<ForEach>(b.build()).unwrap_err().message
        };
        assert!(run(json!({"a": "apple"}), true).contains("the values of 'a' must be a list"));
        assert!(run(json!("fruit"), true).contains("invalid argument"));
        assert!(run(json!({"a": [1]}), false).contains("_do is required"));
        let big: Vec<Value> = (0..4000).map(|i| json!(i)).collect();
        assert!(run(json!({"a": big, "b": big}), true).contains("too many for_each subtasks (16000000)"));
    }
}

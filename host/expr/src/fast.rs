//! A shortcut for the most common templates, rendered in Rust without entering JS:
//! `${name}` and `${name.field.field}` references to params. The result must be exactly what
//! the JS engine gives (digdag.js's formatting: the string itself, empty text for null or
//! undefined, `JSON.stringify` of anything else, numbers as JS prints them).
//!
//! Whenever JS would do something else than read own properties of plain JSON data — throw
//! (a name the params lack is a ReferenceError; a field of undefined or null a TypeError),
//! find a built-in (`o.constructor`, `s.length`, a global such as `Math`), or treat the text
//! as syntax (`${this}`, `${null}`) — the fast path declines and the whole config goes
//! through JS, so the two never differ. `tests::fast_path_agrees_with_js` checks that.

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

/// Words that are syntax, not variable names, where a template names its variable: JS never
/// looks them up in the params (`${this}`, `${null}`, `${typeof}`).
const RESERVED: &[&str] = &[
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "import",
    "in",
    "instanceof",
    "new",
    "null",
    "return",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "let",
    "static",
    "implements",
    "interface",
    "package",
    "private",
    "protected",
    "public",
    "await",
];

/// Properties every plain object inherits (QuickJS's `Object.prototype`): JS finds them on an
/// object that lacks its own, so a missing field by one of these names is not undefined.
const INHERITED: &[&str] = &[
    "constructor",
    "toString",
    "toLocaleString",
    "valueOf",
    "hasOwnProperty",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "__proto__",
    "__defineGetter__",
    "__defineSetter__",
    "__lookupGetter__",
    "__lookupSetter__",
];

/// `name(.field)*` resolved against the already-evaluated keys, then the params.
fn reference(expr: &str, scope: &Object, built: &Object) -> Option<String> {
    let mut parts = expr.trim().split('.');
    let name = parts.next()?;
    // `__`-names are left to JS: the compiled template's own locals (`__f`, `__v`) live there.
    if !is_identifier(name) || RESERVED.contains(&name) || name.starts_with("__") {
        return None;
    }
    // A name the params lack is a global or a ReferenceError: JS decides.
    let mut value = built.get(name).or_else(|| scope.get(name))?;
    let mut fields = parts.peekable();
    while let Some(field) = fields.next() {
        if !is_identifier(field) || INHERITED.contains(&field) {
            return None;
        }
        // Only own properties of a JSON object are read here; a field of a string, number,
        // array (`length`, methods), null (TypeError) ... is JS's business.
        let Value::Object(o) = value else { return None };
        match o.get(field) {
            Some(v) => value = v,
            // `o.missing` is undefined, shown as empty text; `o.missing.more` is a TypeError.
            None if fields.peek().is_none() => return Some(String::new()),
            None => return None,
        }
    }
    match value {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        other => {
            let mut out = String::new();
            js_json(other, &mut out)?;
            Some(out)
        }
    }
}

/// `JSON.stringify(value)` as QuickJS writes it: no spaces, numbers as JS prints them,
/// object keys that are array indices first in ascending order, then the others in order.
fn js_json(value: &Value, out: &mut String) -> Option<()> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&js_number(n.as_f64()?)?),
        Value::String(s) => js_quote(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                js_json(item, out)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut indices: Vec<(u32, &String)> = o.keys().filter_map(|k| array_index(k).map(|i| (i, k))).collect();
            indices.sort_unstable();
            let named = o.keys().filter(|k| array_index(k).is_none());
            out.push('{');
            for (i, key) in indices.into_iter().map(|(_, k)| k).chain(named).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                js_quote(key, out);
                out.push(':');
                js_json(&o[key.as_str()], out)?;
            }
            out.push('}');
        }
    }
    Some(())
}

/// The value of a key that JS orders as an array index: the canonical decimal form of an
/// integer below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty()
        || key.len() > 10
        || !key.bytes().all(|b| b.is_ascii_digit())
        || (key.len() > 1 && key.starts_with('0'))
    {
        return None;
    }
    key.parse::<u64>().ok().filter(|&n| n < u64::from(u32::MAX)).map(|n| n as u32)
}

fn js_quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as JS's `Number.prototype.toString` (and `JSON.stringify`) prints it: the
/// shortest digits that read back to it, in plain notation from 1e-6 up to 1e21 and as
/// `1.5e+21` / `1e-7` outside. Parameters come to JS through JSON, so integers past 2^53 are
/// rounded to the nearest double there as they are here.
fn js_number(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some("0".to_string()); // -0 too
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as JS's algorithm does.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().ok()? + 1;
    let mut s = String::new();
    if x < 0.0 {
        s.push('-');
    }
    if k <= n && n <= 21 {
        s.push_str(&digits);
        s.push_str(&"0".repeat((n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.push_str(&"0".repeat((-n) as usize));
        s.push_str(&digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let e = n - 1;
        s.push('e');
        s.push(if e < 0 { '-' } else { '+' });
        s.push_str(&e.abs().to_string());
    }
    Some(s)
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
        let out =
            eval_config(&obj(json!({"a": "${b}", "b": "later", "c": "${a}"})), &obj(json!({"a": "raw", "b": "p"})))
                .unwrap();
        assert_eq!(out["c"], "p");
        let nested = eval_config(&obj(json!({"a": "x", "n": {"k": "${a}"}})), &scope).unwrap();
        assert_eq!(nested["n"]["k"], "raw", "a nested object sees the params, not the outer keys");
    }

    #[test]
    fn anything_else_goes_to_js() {
        let scope = obj(json!({"f": 1.5, "o": {"a": 1}, "l": [1], "s": "x", "z": null, "this": 1, "__f": 1}));
        for t in [
            "${missing}",
            "${s.length}",
            "${s + 1}",
            "${1}",
            "${o.a.b}",
            "${o.missing.more}",
            "${z.x}",
            "${o.constructor}",
            "${o.toString}",
            "${this}",
            "${__f}",
            "${l.length}",
        ] {
            assert!(eval_config(&obj(json!({ "k": t })), &scope).is_none(), "{t}");
        }
        assert!(eval_config(&obj(json!({"k": "${secret:x}"})), &scope).is_some());
    }

    #[test]
    fn numbers_print_as_in_js() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.5, "1.5"),
            (-2.0, "-2"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (-1.25e-7, "-1.25e-7"),
            (9007199254740993.0, "9007199254740992"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (x, want) in cases {
            assert_eq!(js_number(x).unwrap(), want, "{x:?}");
        }
    }

    /// The fast path's answer for every template it takes must be JS's, and where JS fails
    /// the fast path must have declined.
    #[test]
    fn fast_path_agrees_with_js() {
        let ev = crate::Evaluator::new(spade_dig::Zone::UTC, crate::ExprLimits::default()).unwrap();
        let scope = obj(json!({
            "s": "text", "e": "", "u": "naïve \"q\" \\ \n\t\u{1} \u{7f} \u{2028}", "n": 3, "neg": -7, "f": 1.5,
            "big": 12345678901234567890u64, "huge": 1e21, "tiny": 1e-7, "imax": 9007199254740993i64,
            "t": true, "no": false, "z": null, "undefined": "shadowed",
            "l": [1, "a", null, {"b": [true]}, 2.5, 1e21], "empty": {}, "el": [],
            "o": {"a": {"b": "deep", "n": 0, "z": null, "l": [], "o": {}}, "s": "x", "2": "two", "10": "ten", "b": 1, "1": "one", "01": "z1", "4294967295": "max"},
            "profile": {"name": "ann"},
            "constructor": "own", "d": "${s}",
        }));
        let mut templates: Vec<String> = Vec::new();
        for name in [
            "s",
            "e",
            "u",
            "n",
            "neg",
            "f",
            "big",
            "huge",
            "tiny",
            "imax",
            "t",
            "no",
            "z",
            "undefined",
            "l",
            "empty",
            "el",
            "o",
            "profile",
            "constructor",
            "d",
            "missing",
            "Math",
            "this",
            "null",
            "true",
            "moment",
        ] {
            templates.push(format!("${{{name}}}"));
        }
        for path in [
            "o.a",
            "o.a.b",
            "o.a.n",
            "o.a.z",
            "o.a.l",
            "o.a.o",
            "o.a.missing",
            "o.missing",
            "o.missing.x",
            "o.a.b.length",
            "o.s.x",
            "profile.address",
            "profile.address.city",
            "profile.name.first",
            "z.x",
            "n.x",
            "t.x",
            "l.length",
            "l.x",
            "empty.x",
            "empty.x.y",
            "o.constructor",
            "o.toString",
            "o.hasOwnProperty",
            "s.length",
            "u.length",
            "missing.x",
            "o.a.b.c.d",
        ] {
            templates.push(format!("${{{path}}}"));
        }
        templates.extend(
            ["a-${s}-${n}-${z}-", "$${s}", "${ s }", "${s}${o.a.b}", "${o.missing}${s}", "${secret:x}", "$", "${}"]
                .map(str::to_string),
        );
        let mut taken = 0;
        for t in &templates {
            // Alone, and after an earlier key of the same object that shadows `s`.
            for config in [json!({ "k": t }), json!({"s": "first", "k": t})] {
                let config = obj(config);
                let js = ev.eval_config_js(&config, &scope);
                // Where the fast path declines, JS's answer, whatever it is, is the answer.
                if let Some(fast) = eval_config(&config, &scope) {
                    taken += 1;
                    let js = js.unwrap_or_else(|e| panic!("{t}: the fast path answered but JS failed: {e}"));
                    assert_eq!(Value::Object(fast), Value::Object(js), "{t}");
                }
            }
        }
        assert!(taken > templates.len(), "the fast path should take most of these ({taken})");
        // The reported defect: a field of a missing field fails in JS, so it must fail here too.
        let e = ev.eval_config(&obj(json!({"k": "${profile.address.city}"})), &scope).unwrap_err();
        assert!(e.message.contains("TypeError"), "{e}");
    }
}

//! Encodings operators need for HTTP and mail: base64 (RFC 4648, padded) and
//! `application/x-www-form-urlencoded`.

use serde_json::Value;

use crate::Object;

/// Standard base64 with padding, no line breaks.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// One form value: unreserved characters as they are, space as `+`, the rest `%XX`.
pub fn form_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `k=v&...` from pairs.
pub fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs.into_iter().map(|(k, v)| format!("{}={}", form_value(k), form_value(v))).collect::<Vec<_>>().join("&")
}

/// `k=v&...` from a JSON map: strings as they are, null as empty, other values as JSON.
pub fn form_of_map(pairs: &Object) -> String {
    let texts: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    form(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"\0u\0p"), "AHUAcA==");
        assert_eq!(form_value("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(form([("q", "x y"), ("n", "1")]), "q=x+y&n=1");
        let m = serde_json::json!({"a b": "c&d", "n": 1, "z": null});
        assert_eq!(form_of_map(m.as_object().unwrap()), "a+b=c%26d&n=1&z=");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}

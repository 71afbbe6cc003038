//! `http>: URI`: send one HTTP request (Digdag HttpOperatorFactory); `http_call>: URI`: the
//! same request, whose response is a workflow run as the task's subtasks ([`HttpCall`]).
//!
//! Options: `method` (GET), `content` + `content_format` (`text`, `json`, `form`; default
//! `text` for a string, else `json`) + `content_type`, `headers` (a list of single-key maps,
//! or one map), `store_content` (false), `timeout` (seconds, 30), `retry` (default true for
//! idempotent methods). Secrets, when granted: `http.uri` (when the argument is missing),
//! `http.authorization` (the Authorization header), `http.user` + `http.password` (basic
//! authentication); `${secret:KEY}` in the URI, header values and content is replaced by
//! that secret (the plugin asks for any key; the project grants which). Logs and error
//! messages show the URI as written, never with secret values. `insecure: true` is not
//! supported (TLS is always verified): warned.
//!
//! Stores: `http.last_status` always, `http.last_content` with `store_content` (at most 64 KiB,
//! larger content fails the task); both keys are reset first, as Digdag does. A status
//! outside 2xx fails the task; 5xx, 408 and 429 (and timeouts and connection failures) are
//! retryable when `retry` is on, other 4xx never.
//!
//! Capabilities: `http` (wasi:http; the host checks every request, redirects included,
//! against the plugin's http grant) and `secrets` (by default granted `http.*`).

use serde_json::Value;
use spade_sdk::{Failure, Operator, Outcome, Request, Result, http, json, log, secrets};

/// Digdag's `config.http.max_stored_response_content_size` default.
pub const MAX_STORED_CONTENT: usize = 64 << 10;
/// Largest response read when the content is not stored (only the status matters then).
const MAX_UNSTORED_CONTENT: usize = 16 << 20;
const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

pub struct Http;

fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// A `timeout` in seconds: a number or a numeric string.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `value` with `${secret:...}` rendered in every string in it (map keys stay as written).
fn render_strings(value: &Value, render: &dyn Fn(&str) -> Result<String>) -> Result<Value> {
    Ok(match value {
        Value::String(s) if s.contains("${secret:") => Value::String(render(s)?),
        Value::Array(items) => Value::Array(items.iter().map(|v| render_strings(v, render)).collect::<Result<_>>()?),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| Ok((k.clone(), render_strings(v, render)?))).collect::<Result<_>>()?)
        }
        other => other.clone(),
    })
}

/// `headers:` as (name, value) pairs: a list of single-key maps (Digdag) or one map.
fn headers(req: &Request, at: &dyn Fn(String) -> Failure) -> Result<Vec<(String, String)>> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    match req.params.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Value::Object(m) = item else {
                    return Err(at(format!(
                        "headers: each entry must be a map like `- Accept: text/plain`, got {item}"
                    )));
                };
                for (k, v) in m {
                    out.push((k.clone(), text(v)));
                }
            }
        }
        Some(Value::Object(m)) => out.extend(m.iter().map(|(k, v)| (k.clone(), text(v)))),
        Some(other) => return Err(at(format!("headers must be a list of single-key maps, got {other}"))),
    }
    Ok(out)
}

/// Sends the request a task describes (Digdag's HttpOperator: URI, method, headers, content,
/// secrets, timeout, retry) and returns a 2xx response, reading at most `limit` bytes of
/// it (`content_kept` says whether a larger body is an error about keeping content). A
/// non-2xx status fails the task.
fn exchange(req: &Request, limit: usize, content_kept: bool) -> Result<http::Response> {
    let location = req.location();
    let at = |m: String| Failure::new(format!("{location}: {m}"));
    let with_secrets = |text: &str| secrets::render(text).map_err(at);
    // `shown` is what logs and messages print: the URI as written, or a placeholder
    // for the secret http.uri.
    let (uri, shown) = match &req.command {
        Value::String(s) if !s.trim().is_empty() => (with_secrets(s.trim())?, s.trim().to_string()),
        Value::Null => (
            secrets::get("http.uri").ok_or_else(|| {
                at("missing URI; write it as `http>: https://...` (or set the secret http.uri)".into())
            })?,
            "(secret http.uri)".to_string(),
        ),
        other => return Err(at(format!("the URI must be a string, got {other}"))),
    };
    let method = req.param_or::<String>("method", "GET".into())?.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(at(format!("invalid method {method:?}")));
    }
    let retry = req.param_or("retry", idempotent(&method))?;
    let timeout = match req.params.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_SECONDS,
        Some(v) => seconds(v).ok_or_else(|| at(format!("timeout must be a number of seconds, got {v}")))?,
    };
    if req.param_or("insecure", false)? {
        log::warn(format!("{location}: insecure: true is not supported; TLS certificates are verified"));
    }

    let mut headers = headers(req, &at)?;
    for (_, value) in &mut headers {
        *value = with_secrets(value)?;
    }
    let has_header = |h: &[(String, String)], name: &str| h.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut body = Vec::new();
    if let Some(content) = req.params.get("content").filter(|v| !v.is_null()) {
        let content = &render_strings(content, &with_secrets)?;
        let format = match req.param::<String>("content_format")? {
            Some(f) => f.to_ascii_lowercase(),
            None if content.is_string() => "text".into(),
            None => "json".into(),
        };
        let (bytes, default_type) = match format.as_str() {
            "text" => (
                match content {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                "text/plain",
            ),
            "json" => (content.to_string(), "application/json"),
            "form" => match content {
                Value::Object(m) => (spade_sdk::encode::form_of_map(m), "application/x-www-form-urlencoded"),
                other => return Err(at(format!("content_format: form needs content to be a map, got {other}"))),
            },
            other => return Err(at(format!("content_format must be text, json or form, got {other:?}"))),
        };
        body = bytes.into_bytes();
        let content_type = req.param::<String>("content_type")?.unwrap_or_else(|| default_type.to_string());
        if !has_header(&headers, "content-type") {
            headers.push(("Content-Type".into(), content_type));
        }
    }
    if !has_header(&headers, "authorization") {
        if let Some(auth) = secrets::get("http.authorization") {
            headers.push(("Authorization".into(), auth));
        } else if let Some(user) = secrets::get("http.user") {
            let password = secrets::get("http.password").unwrap_or_default();
            headers.push((
                "Authorization".into(),
                format!("Basic {}", spade_sdk::encode::base64(format!("{user}:{password}").as_bytes())),
            ));
        }
    }

    let mut request = http::Request::new(method.clone(), uri.clone())
        .body(body)
        .timeout(std::time::Duration::from_secs(timeout.max(1)))
        .max_response_bytes(limit);
    request.headers = headers;
    log::info(format!("sending {method} {shown}"));
    let response = match http::send(&request) {
        Ok(r) => r,
        Err(http::Error::TooLarge { limit, .. }) if content_kept => {
            return Err(at(format!(
                "the response content of {shown} is larger than {limit} bytes, the most {}> keeps; \
                     fetch less{}",
                req.operator,
                if req.operator == "http" { " or drop store_content" } else { "" }
            )));
        }
        Err(e) => {
            let failure = at(e.to_string().replace(&uri, &shown));
            return Err(if retry && e.is_transient() { failure.retryable() } else { failure });
        }
    };
    let status = response.status;
    if !(200..300).contains(&status) {
        let excerpt: String = response.text().chars().take(200).collect();
        // The final URL differs after redirects; it never holds secrets the
        // workflow wrote, unless the server put them in a Location header.
        let url = if response.url.is_empty() || response.url == uri { shown.clone() } else { response.url.clone() };
        let failure = at(format!(
            "{method} {url} returned HTTP status {status}{}",
            if excerpt.trim().is_empty() { String::new() } else { format!(": {}", excerpt.trim()) }
        ));
        let retryable = retry && (status >= 500 || status == 408 || status == 429);
        return Err(if retryable { failure.retryable() } else { failure });
    }
    Ok(response)
}

impl Operator for Http {
    fn run(req: Request) -> Result<Outcome> {
        let store_content: bool = req.param_or("store_content", false)?;
        let limit = if store_content { MAX_STORED_CONTENT } else { MAX_UNSTORED_CONTENT };
        let response = exchange(&req, limit, store_content)?;
        let status = response.status;
        let mut stored = json!({ "last_status": status });
        if store_content {
            stored["last_content"] = Value::String(response.text());
        }
        Ok(Outcome::done().reset("http.last_content").reset("http.last_status").store("http", stored).into())
    }
}

/// `http_call>: URI`: fetch a workflow over HTTP and run it as this task's subtasks
/// (Digdag's HttpCallOperatorFactory). The response's Content-Type (or
/// `content_type_override`) says how to read it: `application/json` or
/// `application/x-yaml`; at most 64 KiB. `http>`'s options apply (method, headers,
/// content, secrets, timeout, retry); `store_content` does not.
pub struct HttpCall;

impl Operator for HttpCall {
    fn run(req: Request) -> Result<Outcome> {
        let at = |m: String| Failure::new(format!("{}: {m}", req.location()));
        let response = exchange(&req, MAX_STORED_CONTENT, true)?;
        let media = match req.param::<String>("content_type_override")? {
            Some(t) if !t.trim().is_empty() => t,
            _ => response
                .header("content-type")
                .map(str::to_string)
                .ok_or_else(|| at("Content-Type must be set in the HTTP response but not set".into()))?,
        };
        let essence = media.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let text = response.text();
        let workflow = match essence.as_str() {
            "application/json" => serde_json::from_str::<Value>(&text)
                .map_err(|e| at(format!("Failed to parse response as JSON: {e}")))?,
            "application/x-yaml" => spade_sdk::yaml::to_json(&text)
                .map_err(|e| at(format!("the fetched workflow is not valid YAML: {e}")))?,
            _ => {
                return Err(at(format!(
                    "Unsupported Content-Type (expected application/json or application/x-yaml): {media}"
                )));
            }
        };
        let Value::Object(mut config) = workflow else {
            return Err(at(format!("the fetched workflow must be a map of tasks, got {text:.200}")));
        };
        log::info(format!("fetched definition for http_call>:\n{text}"));
        // As for a workflow file: its time zone and schedule belong to a workflow, not to
        // the subtasks it becomes.
        for key in ["timezone", "schedule"] {
            if config.remove(key).is_some() {
                log::warn(format!("the fetched workflow's `{key}:` is ignored (it runs as subtasks of this task)"));
            }
        }
        Ok(Outcome::done().subtasks(config).into())
    }
}

spade_sdk::plugin!(name = "spade-http", operators = {
    "http" => Http,
    "http_call" => HttpCall,
});

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::testing::{MockHost, request};

    fn ok(status: u16, body: &str) -> http::Response {
        http::Response { status, body: body.as_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn stores_status_and_content() {
        let mut host = MockHost { http: Some(Box::new(|_| Ok(ok(200, "hi")))), ..Default::default() };
        let req = request("http").command(json!("http://h/x")).local("store_content", json!(true)).build();
        let out = host.run::<Http>(req).unwrap();
        let done = out.as_done().unwrap();
        assert_eq!(done.store_params["http"], json!({"last_status": 200, "last_content": "hi"}));
        assert_eq!(done.reset_store_params, ["http.last_content", "http.last_status"]);
    }

    #[test]
    fn json_content_and_headers() {
        let mut host = MockHost { http: Some(Box::new(|_| Ok(ok(201, "")))), ..Default::default() };
        let req = request("http")
            .command(json!("http://h/x"))
            .local("method", json!("post"))
            .local("content", json!({"a": 1}))
            .local("headers", json!([{"X-A": "b"}]))
            .build();
        host.run::<Http>(req).unwrap();
        let sent = &host.http_requests[0];
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.body, br#"{"a":1}"#);
        assert!(sent.headers.contains(&("Content-Type".into(), "application/json".into())));
        assert!(sent.headers.contains(&("X-A".into(), "b".into())));
    }

    #[test]
    fn statuses_and_retry() {
        for (status, method, retryable) in
            [(503, "GET", true), (404, "GET", false), (429, "GET", true), (503, "POST", false)]
        {
            let mut host = MockHost { http: Some(Box::new(move |_| Ok(ok(status, "")))), ..Default::default() };
            let req = request("http").command(json!("http://h/")).local("method", json!(method)).build();
            let err = host.run::<Http>(req).unwrap_err();
            assert_eq!(err.retryable, retryable, "{status} {method}: {}", err.message);
            assert!(err.message.contains(&status.to_string()));
        }
    }

    #[test]
    fn secret_references_render_in_uri_headers_and_content() {
        let mut host = MockHost { http: Some(Box::new(|_| Ok(ok(404, "")))), ..Default::default() };
        host.secrets.insert("api.token".into(), "T0K".into());
        let req = request("http")
            .command(json!("http://h/x?key=${secret:api.token}"))
            .local("headers", json!({"X-A": "Bearer ${secret: api.token }"}))
            .local("content", json!({"list": ["${secret:api.token}-${secret:api.token}"], "${secret:k}": 1}))
            .local("method", json!("POST"))
            .build();
        let err = host.run::<Http>(req).unwrap_err();
        assert!(err.message.contains("http://h/x?key=${secret:api.token}") && !err.message.contains("T0K"), "{err}");
        let sent = &host.http_requests[0];
        assert_eq!(sent.url, "http://h/x?key=T0K");
        assert!(sent.headers.contains(&("X-A".into(), "Bearer T0K".into())));
        assert_eq!(sent.body, br#"{"list":["T0K-T0K"],"${secret:k}":1}"#);

        for (uri, expect) in [
            ("http://h/${secret:missing}", "secret missing is not set, or not granted"),
            ("http://h/${secret:api.token", "unclosed"),
            ("http://h/${secret:}", "names no key"),
        ] {
            let mut host = MockHost::default();
            host.secrets.insert("api.token".into(), "T0K".into());
            let err = host.run::<Http>(request("http").command(json!(uri)).build()).unwrap_err();
            assert!(err.message.contains(expect), "{uri}: {err}");
            assert!(host.http_requests.is_empty());
        }
    }

    fn typed(body: &str, content_type: &str) -> http::Response {
        http::Response {
            status: 200,
            body: body.as_bytes().to_vec(),
            headers: vec![("Content-Type".into(), content_type.into())],
            ..Default::default()
        }
    }

    #[test]
    fn http_call_runs_the_fetched_workflow() {
        let mut host = MockHost {
            http: Some(Box::new(|_| {
                Ok(typed(r#"{"timezone": "UTC", "+a": {"echo>": "hi"}}"#, "application/json; charset=utf-8"))
            })),
            ..MockHost::default()
        };
        let out = host.run::<HttpCall>(request("http_call").command(json!("https://wf.example/x")).build()).unwrap();
        assert_eq!(out.as_done().unwrap().subtasks, Some(json!({"+a": {"echo>": "hi"}}).as_object().unwrap().clone()));

        let mut host =
            MockHost { http: Some(Box::new(|_| Ok(typed("+b:\n  echo>: yo\n", "text/plain")))), ..MockHost::default() };
        let req = || request("http_call").command(json!("https://wf.example/y"));
        let err = host.run::<HttpCall>(req().build()).unwrap_err();
        assert!(err.message.contains("Unsupported Content-Type") && err.message.contains("text/plain"), "{err:?}");
        let out =
            host.run::<HttpCall>(req().local("content_type_override", json!("application/x-yaml")).build()).unwrap();
        assert_eq!(out.as_done().unwrap().subtasks, Some(json!({"+b": {"echo>": "yo"}}).as_object().unwrap().clone()));
    }
}

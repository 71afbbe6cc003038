//! Capability `http`: one blocking HTTP request through the standard `wasi:http` interfaces.
//!
//! Only plugins granted http may import `wasi:http` (the host refuses others at install),
//! and the host checks every request against the grant: scheme, host, port, and the address
//! the host resolves to (private, loopback and link-local addresses need a grant naming
//! them). Redirects are followed here, one request per hop, so each hop is checked too.
//!
//! ```ignore
//! use spade_sdk::http;
//! let resp = http::send(&http::Request::get("https://api.example.com/v1/ping"))?;
//! assert_eq!(resp.status, 200);
//! ```
//!
//! Outside wasm (native `cargo test`) requests go to [`MockHost::http`](crate::testing::MockHost)
//! one hop at a time, so redirect handling is testable natively.

use std::fmt;
use std::time::Duration;

/// Redirects followed by default (Digdag's http client follows redirects too).
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// Response body cap used unless [`Request::max_response_bytes`] says otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// One request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, ... (upper case is sent as given).
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Limit of connecting and of each wait for data (the host applies its own ceilings).
    pub timeout: Option<Duration>,
    /// Bodies longer than this fail with [`Error::TooLarge`].
    pub max_response_bytes: usize,
    /// How many redirects (301, 302, 303, 307, 308 with a `Location`) to follow; 0 returns
    /// the redirect response itself.
    pub max_redirects: u32,
}

impl Request {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }

    pub fn get(url: impl Into<String>) -> Request {
        Request::new("GET", url)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    pub fn max_response_bytes(mut self, max: usize) -> Request {
        self.max_response_bytes = max;
        self
    }

    pub fn max_redirects(mut self, max: u32) -> Request {
        self.max_redirects = max;
        self
    }
}

/// A received response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request did not produce a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The URL is not an absolute http(s) URL spade can send.
    InvalidUrl {
        url: String,
        reason: String,
    },
    /// The host refused it: the plugin's http grant does not allow this scheme/host/port.
    Denied {
        url: String,
    },
    /// The host refused it: the host resolves to a private, loopback or link-local address
    /// that no grant names.
    Prohibited {
        url: String,
    },
    /// Connecting or waiting for data took too long (or the task ran out of time).
    Timeout {
        url: String,
    },
    /// The response body is larger than allowed.
    TooLarge {
        url: String,
        limit: usize,
    },
    TooManyRedirects {
        url: String,
        max: u32,
    },
    /// Anything else (connection refused, DNS failure, TLS, protocol errors).
    Failed {
        url: String,
        reason: String,
    },
}

impl Error {
    /// Whether trying again later may succeed (timeouts and connection failures).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::Failed { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
            Error::Denied { url } => write!(
                f,
                "request to {url} was refused by spade: this plugin's http grant (or its manifest) does not allow that scheme, host and port (grant the host to the plugin; the task log lists what is granted)"
            ),
            Error::Prohibited { url } => write!(
                f,
                "request to {url} was refused by spade: the host resolves to a private, loopback or link-local address, which needs a grant naming that address explicitly"
            ),
            Error::Timeout { url } => write!(f, "request to {url} timed out"),
            Error::TooLarge { url, limit } => {
                write!(f, "the response of {url} is larger than {limit} bytes")
            }
            Error::TooManyRedirects { url, max } => {
                write!(f, "more than {max} redirects, the last to {url}")
            }
            Error::Failed { url, reason } => write!(f, "request to {url} failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// The parts of an absolute URL that `wasi:http` wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Url {
    pub scheme: String,
    pub authority: String,
    pub path_and_query: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, Error> {
        let invalid = |reason: &str| Error::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        let (scheme, rest) =
            url.trim().split_once("://").ok_or_else(|| invalid("it must start with http:// or https://"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid("only http and https are supported"));
        }
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid("it has no host"));
        }
        if authority.contains('@') {
            return Err(invalid("user:password in the URL is not supported; use an Authorization header"));
        }
        if authority.chars().any(|c| c.is_whitespace() || c.is_control())
            || path.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid("it contains spaces or control characters (percent-encode them)"));
        }
        let path_and_query = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url { scheme, authority: authority.to_string(), path_and_query })
    }

    /// The target of a `Location` header, relative to this URL.
    pub fn join(&self, location: &str) -> String {
        let location = location.trim();
        if location.contains("://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{}://{rest}", self.scheme)
        } else if location.starts_with('/') {
            format!("{}://{}{location}", self.scheme, self.authority)
        } else {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{}://{}{dir}{location}", self.scheme, self.authority)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path_and_query)
    }
}

/// Sends `req`, following redirects (each hop is a new request the host checks).
pub fn send(req: &Request) -> Result<Response, Error> {
    let mut current = req.clone();
    let mut hops = 0;
    loop {
        let url = Url::parse(&current.url)?;
        let resp = send_one(&current, &url)?;
        let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
        let location = resp.header("location").map(str::to_string);
        let (true, Some(location)) = (redirect && current.max_redirects > 0, location) else {
            return Ok(resp);
        };
        hops += 1;
        let next = url.join(&location);
        if hops > current.max_redirects {
            return Err(Error::TooManyRedirects { url: next, max: current.max_redirects });
        }
        // Like browsers and Digdag's client: 303 (and 301/302 after a POST) becomes a GET
        // without body; 307/308 repeat the request as it was.
        let method = current.method.to_ascii_uppercase();
        if resp.status == 303 || (matches!(resp.status, 301 | 302) && method == "POST") {
            current.method = "GET".into();
            current.body.clear();
            current
                .headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type") && !k.eq_ignore_ascii_case("content-length"));
        }
        // Credentials are for the host they were given for.
        let next_authority = Url::parse(&next).map(|u| u.authority.to_ascii_lowercase());
        if next_authority.as_deref().ok() != Some(url.authority.to_ascii_lowercase().as_str()) {
            current
                .headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("cookie"));
        }
        current.url = next;
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn send_one(req: &Request, url: &Url) -> Result<Response, Error> {
    let hop = Request { url: url.to_string(), ..req.clone() };
    crate::testing::with_mock("http", |h| {
        h.http_requests.push(hop.clone());
        match h.http.as_mut() {
            Some(answer) => answer(&hop),
            None => Err(Error::Failed {
                url: hop.url.clone(),
                reason: "no http handler in this MockHost (set MockHost.http)".into(),
            }),
        }
    })
}

#[cfg(target_arch = "wasm32")]
fn send_one(req: &Request, url: &Url) -> Result<Response, Error> {
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types as t;
    use crate::bindings::wasi::io::streams::StreamError;

    let shown = url.to_string();
    let failed = |reason: String| Error::Failed { url: shown.clone(), reason };
    let invalid = |reason: String| Error::InvalidUrl { url: shown.clone(), reason };
    let headers = t::Fields::new();
    // A known length is sent as Content-Length rather than chunked: many servers refuse
    // chunked request bodies.
    let method_upper = req.method.to_ascii_uppercase();
    let wants_length = !req.body.is_empty() || matches!(method_upper.as_str(), "POST" | "PUT" | "PATCH");
    if wants_length && !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        headers
            .append("content-length", req.body.len().to_string().as_bytes())
            .map_err(|e| failed(format!("cannot set Content-Length: {e:?}")))?;
    }
    for (k, v) in &req.headers {
        headers.append(k, v.as_bytes()).map_err(|e| failed(format!("header {k:?} cannot be sent: {e:?}")))?;
    }
    let request = t::OutgoingRequest::new(headers);
    let method = match method_upper.as_str() {
        "GET" => t::Method::Get,
        "HEAD" => t::Method::Head,
        "POST" => t::Method::Post,
        "PUT" => t::Method::Put,
        "DELETE" => t::Method::Delete,
        "OPTIONS" => t::Method::Options,
        "PATCH" => t::Method::Patch,
        "TRACE" => t::Method::Trace,
        _ => t::Method::Other(req.method.clone()),
    };
    request.set_method(&method).map_err(|()| failed(format!("invalid method {:?}", req.method)))?;
    let scheme = if url.scheme == "https" { t::Scheme::Https } else { t::Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| invalid("invalid scheme".into()))?;
    request.set_authority(Some(&url.authority)).map_err(|()| invalid("invalid host or port".into()))?;
    request.set_path_with_query(Some(&url.path_and_query)).map_err(|()| invalid("invalid path".into()))?;
    let options = t::RequestOptions::new();
    if let Some(timeout) = req.timeout {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // The host may refuse options it does not support; its own ceilings still apply.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
    }
    let body = request.body().map_err(|()| failed("cannot open the request body".into()))?;
    let future = outgoing_handler::handle(request, Some(options)).map_err(|e| error_code(&shown, e, req))?;
    // When the host refuses the request (not granted, a prohibited address) the body stream
    // closes first; the response future then holds the reason, which is what to report.
    let mut body_error = None;
    {
        let out = body.write().map_err(|()| failed("cannot write the request body".into()))?;
        for chunk in req.body.chunks(4096) {
            if let Err(e) = out.blocking_write_and_flush(chunk) {
                body_error = Some(format!("sending the request body failed: {e:?}"));
                break;
            }
        }
    }
    if body_error.is_none() {
        t::OutgoingBody::finish(body, None).map_err(|e| error_code(&shown, e, req))?;
    } else {
        drop(body);
    }
    let response = loop {
        match future.get() {
            Some(r) => break r,
            None => future.subscribe().block(),
        }
    };
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(error_code(&shown, e, req)),
        Err(()) => return Err(failed("the response was already taken".into())),
    };
    if let Some(reason) = body_error {
        return Err(failed(reason));
    }
    let status = response.status();
    let headers =
        response.headers().entries().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
    let incoming = response.consume().map_err(|()| failed("cannot read the response body".into()))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| failed("cannot read the response body".into()))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > req.max_response_bytes {
                        return Err(Error::TooLarge { url: shown, limit: req.max_response_bytes });
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    // The host ends a stalled or oversized body with an error.
                    let reason = e.to_debug_string();
                    return Err(if reason.contains("timeout") || reason.contains("Timeout") {
                        Error::Timeout { url: shown }
                    } else if reason.contains("BodySize") || reason.contains("body size") {
                        Error::TooLarge { url: shown, limit: req.max_response_bytes }
                    } else {
                        failed(format!("reading the response body failed: {reason}"))
                    });
                }
            }
        }
    }
    drop(t::IncomingBody::finish(incoming));
    Ok(Response { status, headers, body, url: shown })
}

#[cfg(target_arch = "wasm32")]
fn error_code(url: &str, e: crate::bindings::wasi::http::types::ErrorCode, req: &Request) -> Error {
    use crate::bindings::wasi::http::types::ErrorCode as E;
    let url = url.to_string();
    match e {
        E::HttpRequestDenied => Error::Denied { url },
        E::DestinationIpProhibited => Error::Prohibited { url },
        E::ConnectionTimeout
        | E::ConnectionReadTimeout
        | E::ConnectionWriteTimeout
        | E::DnsTimeout
        | E::HttpResponseTimeout => Error::Timeout { url },
        E::HttpResponseBodySize(_) => Error::TooLarge { url, limit: req.max_response_bytes },
        E::ConnectionRefused => Error::Failed { url, reason: "connection refused".into() },
        E::DnsError(d) => {
            Error::Failed { url, reason: format!("cannot resolve the host ({})", d.rcode.unwrap_or_default()) }
        }
        other => Error::Failed { url, reason: format!("{other:?}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("HTTPS://api.example.com:8443/a/b?x=1#frag").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.authority.as_str(), u.path_and_query.as_str()),
            ("https", "api.example.com:8443", "/a/b?x=1")
        );
        assert_eq!(Url::parse("http://h").unwrap().path_and_query, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path_and_query, "/?q");
        for bad in ["ftp://h/", "h/path", "http:///x", "http://u:p@h/", "http://h/a b"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let base = Url::parse("http://h:1/dir/page?q").unwrap();
        assert_eq!(base.join("https://o/x"), "https://o/x");
        assert_eq!(base.join("//o/x"), "http://o/x");
        assert_eq!(base.join("/x"), "http://h:1/x");
        assert_eq!(base.join("y"), "http://h:1/dir/y");
    }
}

//! The `http` capability: outgoing `wasi:http` requests of plugins granted http, checked
//! against the plugin's allowlist ([`HttpAllow`]) and sent by spade's own connector.
//!
//! wasmtime-wasi-http implements the guest-facing interfaces; spade replaces only its
//! `send_request` hook ([`HttpGuard`]). Every request is checked on its own (a plugin that
//! follows a redirect makes a new request, checked like the first): scheme, host and port
//! must match a grant (and, for a plugin whose manifest lists destinations, one of those
//! too: [`HttpPolicy`]); the host is resolved here and addresses in private, loopback,
//! link-local and other non-public ranges are refused unless a matching grant names that
//! address (an IP literal, or `localhost` for loopback) or allows private addresses. The
//! connection then goes to exactly the address that was checked, so a DNS answer cannot
//! change between the check and the connect. Connect/first-byte/between-bytes timeouts,
//! the call's deadline and kill, and a response size cap all end a request early.
//!
//! Why a request was refused goes to the task log (the guest only sees a `wasi:http`
//! error code).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::host::Stop;

/// Most bytes of one response body a plugin can receive.
pub const MAX_HTTP_RESPONSE_BYTES: u64 = 64 << 20;
/// Most requests one call may make (redirect loops, request floods).
pub const MAX_HTTP_REQUESTS: u32 = 256;
/// Ceilings of the timeouts a guest may ask for (it may only lower them).
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
pub const HTTP_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a waiting request looks at the call's deadline and kill flag.
const STOP_SLICE: Duration = Duration::from_millis(20);

/// Which ports a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpPort {
    /// The scheme's default port (80 for http, 443 for https).
    Default,
    Exact(u16),
    /// `*`: every port.
    Any,
}

/// One entry of a plugin's http grant: `[scheme://]host[:port]`.
///
/// `scheme` is `http` or `https` (none: both). `host` is a DNS name (exact, case-insensitive),
/// `*.example.com` (any subdomain, not `example.com` itself), `*` (any host), or an IP
/// literal (`127.0.0.1`, `[::1]`). Port: a number, `*`, or none for the scheme's default.
///
/// Addresses in private/loopback/link-local ranges are refused unless the grant names the
/// address (IP literal host, or `localhost` for loopback) or sets `private`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAllow {
    pub scheme: Option<String>,
    pub host: String,
    pub port: HttpPort,
    /// Also allow non-public addresses the host resolves to.
    pub private: bool,
}

impl HttpAllow {
    /// Parses `[scheme://]host[:port]` (see the type's docs).
    pub fn parse(text: &str) -> Result<HttpAllow, String> {
        let bad = |why: &str| {
            format!(
                "invalid http grant {text:?}: {why}; expected [http|https://]host[:port], e.g. https://api.example.com or 127.0.0.1:8080"
            )
        };
        let t = text.trim();
        let (scheme, rest) = match t.split_once("://") {
            Some((s, r)) => {
                let s = s.to_ascii_lowercase();
                if s != "http" && s != "https" {
                    return Err(bad("the scheme must be http or https"));
                }
                (Some(s), r)
            }
            None => (None, t),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("give only a host and port, not a path or user"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => HttpPort::Default,
            Some("*") => HttpPort::Any,
            Some(p) => HttpPort::Exact(p.parse().map_err(|_| bad("the port is not a number"))?),
        };
        let host = host.to_ascii_lowercase();
        let valid_host = host == "*"
            || host.parse::<IpAddr>().is_ok()
            || (!host.is_empty()
                && host
                    .strip_prefix("*.")
                    .unwrap_or(&host)
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !valid_host {
            return Err(bad("the host is not a name, `*.domain`, `*` or an IP address"));
        }
        Ok(HttpAllow { scheme, host, port, private: false })
    }

    /// Also allow private/loopback/link-local addresses of this grant's hosts.
    pub fn with_private(mut self) -> Self {
        self.private = true;
        self
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let port_ok = match self.port {
            HttpPort::Any => true,
            HttpPort::Exact(p) => p == port,
            HttpPort::Default => port == default_port(scheme),
        };
        let host_ok = if self.host == "*" {
            true
        } else if let Some(domain) = self.host.strip_prefix("*.") {
            host.len() > domain.len() + 1
                && host.ends_with(domain)
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        } else if let (Ok(a), Ok(b)) = (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            a == b
        } else {
            self.host == host
        };
        port_ok && host_ok
    }

    /// Whether this grant lets the request reach `ip` although it is not public.
    fn names_address(&self, ip: IpAddr) -> bool {
        self.private || host_names_address(&self.host, ip)
    }
}

/// Whether a grant's `host` names `ip` itself (its IP literal, or `localhost` for a loopback
/// address), which lets it reach `ip` although it is not public (http and tcp grants).
pub(crate) fn host_names_address(host: &str, ip: IpAddr) -> bool {
    host.parse::<IpAddr>().is_ok_and(|a| a == ip) || (host == "localhost" && ip.is_loopback())
}

impl FromStr for HttpAllow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HttpAllow::parse(s)
    }
}

impl fmt::Display for HttpAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            HttpPort::Default => {}
            HttpPort::Exact(p) => write!(f, ":{p}")?,
            HttpPort::Any => f.write_str(":*")?,
        }
        if self.private {
            f.write_str(" (private addresses allowed)")?;
        }
        Ok(())
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// Whether `ip` is a public unicast address (what a grant by name may reach).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from(0u128)
                || (s[0..5] == [0, 0, 0, 0, 0] && s[5] == 0)) // IPv4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240) // reserved
}

/// Where one plugin may send requests: what it was granted and, when its manifest says,
/// what it asked for. A destination must be allowed by both. Reaching a non-public address
/// is the grant's decision alone (a plugin asking for `*` cannot know the host's network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPolicy {
    pub granted: Vec<HttpAllow>,
    /// The manifest's `[wants] http`; `None` for a plugin without a manifest.
    pub wanted: Option<Vec<HttpAllow>>,
}

/// The granted entries that allow one destination.
struct Matching {
    granted: Vec<HttpAllow>,
}

impl Matching {
    fn names_address(&self, ip: IpAddr) -> bool {
        self.granted.iter().any(|g| g.names_address(ip))
    }
}

impl HttpPolicy {
    /// The granted entries for `scheme://host:port`, or why it is refused.
    fn matching(&self, scheme: &str, host: &str, port: u16) -> Result<Matching, String> {
        let pick = |list: &[HttpAllow]| -> Vec<HttpAllow> {
            list.iter().filter(|a| a.matches(scheme, host, port)).cloned().collect()
        };
        let granted = pick(&self.granted);
        if granted.is_empty() {
            return Err(format!(
                "{scheme}://{host}:{port} is not in this plugin's http grant (granted: {})",
                allowed_list(&self.granted)
            ));
        }
        if let Some(wanted) = &self.wanted
            && pick(wanted).is_empty()
        {
            return Err(format!(
                "{scheme}://{host}:{port} is not among the destinations the plugin's manifest asks for ({})",
                allowed_list(wanted)
            ));
        }
        Ok(Matching { granted })
    }
}

impl fmt::Display for HttpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&allowed_list(&self.granted))?;
        if let Some(w) = &self.wanted {
            write!(f, "; asks for {}", allowed_list(w))?;
        }
        Ok(())
    }
}

/// Per-call state of the `send_request` hook.
pub(crate) struct HttpGuard {
    pub policy: Arc<HttpPolicy>,
    pub stop: Arc<Stop>,
    /// Why requests were refused or failed, for the task log.
    pub notes: Arc<Mutex<Vec<String>>>,
    requests: u32,
}

impl HttpGuard {
    pub fn new(policy: Arc<HttpPolicy>, stop: Arc<Stop>) -> Self {
        HttpGuard { policy, stop, notes: Arc::default(), requests: 0 }
    }
}

type SendResult = Result<(http::Response<WasiBody>, IoFuture), HttpError>;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

fn note(notes: &Mutex<Vec<String>>, line: String) {
    notes.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

fn allowed_list(allow: &[HttpAllow]) -> String {
    if allow.is_empty() {
        return "no hosts".into();
    }
    allow.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

impl WasiHttpHooks for HttpGuard {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let notes = self.notes.clone();
        let uri = request.uri().clone();
        // Only the origin goes to the task log: paths and queries often carry tokens.
        let shown = format!(
            "{} {}://{}{}",
            request.method(),
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?"),
            uri.port().map_or(String::new(), |p| format!(":{p}"))
        );
        let deny = move |line: String, err: HttpError| -> Box<dyn Future<Output = SendResult> + Send> {
            note(&notes, line);
            Box::new(async move { Err(err) })
        };
        self.requests += 1;
        if self.requests > MAX_HTTP_REQUESTS {
            return deny(
                format!("spade: http request {shown} refused: a call may make at most {MAX_HTTP_REQUESTS} requests"),
                HttpError::ConnectionLimitReached,
            );
        }
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return deny(
                format!("spade: http request {shown} refused: only http and https are supported"),
                HttpError::HttpRequestDenied,
            );
        }
        let Some(host) = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
        else {
            return deny(
                format!("spade: http request {shown} refused: the URL has no host"),
                HttpError::HttpRequestUriInvalid,
            );
        };
        let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
        let grants = match self.policy.matching(&scheme, &host, port) {
            Ok(m) => m,
            Err(why) => {
                return deny(format!("spade: http request {shown} refused: {why}"), HttpError::HttpRequestDenied);
            }
        };
        let stop = self.stop.clone();
        let notes = self.notes.clone();
        let opts = options.unwrap_or_default();
        let limits = Timeouts {
            connect: opts.connect_timeout.map_or(HTTP_CONNECT_TIMEOUT, |t| t.min(HTTP_CONNECT_TIMEOUT)),
            first_byte: opts.first_byte_timeout.map_or(HTTP_FIRST_BYTE_TIMEOUT, |t| t.min(HTTP_FIRST_BYTE_TIMEOUT)),
            between_bytes: opts
                .between_bytes_timeout
                .map_or(HTTP_BETWEEN_BYTES_TIMEOUT, |t| t.min(HTTP_BETWEEN_BYTES_TIMEOUT)),
        };
        Box::new(async move {
            let target = Target { https: scheme == "https", host, port };
            let sent = until_stopped(&stop, send(request, &target, &grants, limits, stop.clone())).await;
            match sent {
                Some(Ok(r)) => Ok(r),
                Some(Err((err, why))) => {
                    note(&notes, format!("spade: http request {shown} failed: {why}"));
                    Err(err)
                }
                None => {
                    note(
                        &notes,
                        format!("spade: http request {shown} stopped: the call was killed or ran out of time"),
                    );
                    Err(HttpError::ConnectionTimeout)
                }
            }
        })
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

struct Target {
    https: bool,
    host: String,
    port: u16,
}

/// Runs `fut` until it ends or the call must stop (`None`).
async fn until_stopped<F: Future>(stop: &Stop, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval(STOP_SLICE);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        while tick.poll_tick(cx).is_ready() {
            if stop.check().is_some() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

type Failed = (HttpError, String);

async fn resolve(target: &Target, grants: &Matching, timeout: Duration) -> Result<Vec<SocketAddr>, Failed> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => {
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => {
                    return Err((HttpError::DnsTimeout, format!("resolving {} timed out", target.host)));
                }
                Ok(Err(e)) => {
                    return Err((
                        HttpError::DnsError { rcode: Some(e.to_string()), info_code: None },
                        format!("cannot resolve {}: {e}", target.host),
                    ));
                }
                Ok(Ok(a)) => a.collect(),
            }
        }
    };
    let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.into_iter().partition(|a| is_public(a.ip()) || grants.names_address(a.ip()));
    if ok.is_empty() {
        let list = refused.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
        return Err((
            HttpError::DestinationIpProhibited,
            format!(
                "{} resolves to {list}, a private, loopback or link-local address; a grant must name such an address explicitly (e.g. `{}:{}`)",
                target.host,
                refused.first().map_or(String::new(), |a| match a.ip() {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                }),
                target.port
            ),
        ));
    }
    Ok(ok)
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn send(
    mut request: http::Request<WasiBody>,
    target: &Target,
    grants: &Matching,
    limits: Timeouts,
    stop: Arc<Stop>,
) -> Result<(http::Response<WasiBody>, IoFuture), Failed> {
    let addrs = resolve(target, grants, limits.connect).await?;
    let mut last = None;
    let mut tcp = None;
    for addr in &addrs {
        match tokio::time::timeout(limits.connect, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => {
                let why = format!("cannot connect to {addr}: {e}");
                last = Some((HttpError::Connect(e), why));
            }
            Err(_) => {
                last = Some((
                    HttpError::ConnectionTimeout,
                    format!("connecting to {addr} timed out after {:?}", limits.connect),
                ))
            }
        }
    }
    let Some(tcp) = tcp else {
        return Err(last.unwrap_or((HttpError::DestinationUnavailable, "no address".into())));
    };
    let stream: Box<dyn Stream> = if target.https {
        let name = match target.host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
                (HttpError::InvalidDnsNameError(e), format!("{} is not a valid TLS server name", target.host))
            })?,
        };
        let tls = tokio_rustls::TlsConnector::from(tls_config());
        match tokio::time::timeout(limits.connect, tls.connect(name, tcp)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                return Err((HttpError::TlsProtocolError, format!("TLS with {} failed: {e}", target.host)));
            }
            Err(_) => {
                return Err((HttpError::ConnectionTimeout, "the TLS handshake timed out".into()));
            }
        }
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = match tokio::time::timeout(
        limits.connect,
        hyper::client::conn::http1::Builder::new()
            .handshake::<_, WasiBody>(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err((HttpError::from(e), "the HTTP handshake failed".into())),
        Err(_) => {
            return Err((HttpError::ConnectionTimeout, "the HTTP handshake timed out".into()));
        }
    };
    // The request line carries only the path: the authority went to the Host header.
    let path = request.uri().path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|e| (HttpError::HttpRequestUriInvalid, format!("invalid path: {e}")))?;

    let mut conn = Some(conn);
    let mut response = std::pin::pin!(tokio::time::timeout(limits.first_byte, sender.send_request(request)));
    // hyper needs its connection driven while the response is awaited.
    let res = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = response.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Some(c) = conn.as_mut()
            && let Poll::Ready(done) = Pin::new(c).poll(cx)
        {
            conn = None;
            if let Err(e) = done {
                return Poll::Ready(Ok(Err(e)));
            }
            return response.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await;
    let res = match res {
        Err(_) => {
            return Err((HttpError::ConnectionReadTimeout, format!("no response within {:?}", limits.first_byte)));
        }
        Ok(Err(e)) => {
            return Err((HttpError::from(e), "the server did not send a valid HTTP response".into()));
        }
        Ok(Ok(r)) => r,
    };
    if let Some(len) =
        res.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > MAX_HTTP_RESPONSE_BYTES
    {
        return Err((
            HttpError::HttpResponseBodySize(Some(len)),
            format!("the response body is {len} bytes; the limit is {MAX_HTTP_RESPONSE_BYTES} bytes"),
        ));
    }
    let io: IoFuture = Box::new(async move {
        match conn {
            Some(c) => c.await.map_err(HttpError::from),
            None => Ok(()),
        }
    });
    let res = res.map(|incoming| {
        CappedBody {
            incoming,
            read: 0,
            between_bytes: limits.between_bytes,
            last_frame: tokio::time::Instant::now(),
            tick: tokio::time::interval(STOP_SLICE),
            stop,
        }
        .boxed_unsync()
    });
    Ok((res, io))
}

/// The response body as the guest reads it: at most [`MAX_HTTP_RESPONSE_BYTES`], ended by
/// the between-bytes timeout or the call's stop.
struct CappedBody {
    incoming: hyper::body::Incoming,
    read: u64,
    between_bytes: Duration,
    last_frame: tokio::time::Instant,
    tick: tokio::time::Interval,
    stop: Arc<Stop>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > MAX_HTTP_RESPONSE_BYTES {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(this.read)))));
                    }
                }
                this.last_frame = tokio::time::Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                while this.tick.poll_tick(cx).is_ready() {
                    if this.stop.check().is_some() {
                        return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                    }
                    if this.last_frame.elapsed() > this.between_bytes {
                        return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> HttpAllow {
        HttpAllow::parse(s).unwrap()
    }

    #[test]
    fn grants_parse_and_match() {
        let g = a("https://api.example.com");
        assert!(g.matches("https", "api.example.com", 443));
        assert!(!g.matches("http", "api.example.com", 80));
        assert!(!g.matches("https", "api.example.com", 8443));
        assert!(!g.matches("https", "x.api.example.com", 443));
        let w = a("*.example.com:*");
        assert!(w.matches("http", "a.example.com", 8080));
        assert!(!w.matches("http", "example.com", 80));
        assert!(!w.matches("http", "badexample.com", 80));
        let ip = a("127.0.0.1:8080");
        assert!(ip.matches("http", "127.0.0.1", 8080));
        assert!(ip.names_address("127.0.0.1".parse().unwrap()));
        assert!(!ip.names_address("127.0.0.2".parse().unwrap()));
        let v6 = a("[::1]:9000");
        assert!(v6.matches("http", "::1", 9000));
        assert_eq!(v6.to_string(), "[::1]:9000");
        assert!(a("*").matches("https", "anything.test", 443));
        assert!(!a("*").names_address("10.0.0.1".parse().unwrap()));
        assert!(a("localhost:1").names_address("127.0.0.1".parse().unwrap()));
        for bad in ["ftp://x", "http://x/path", "x:port", "user@x", "", "a b"] {
            assert!(HttpAllow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_public_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::1", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
